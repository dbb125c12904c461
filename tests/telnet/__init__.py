"""Tests of iceserv.telnet (a package, so its module names cannot clash with other test dirs)."""
