"""Tests of iceserv.daemon (a package, so its module names cannot clash with other test dirs)."""
