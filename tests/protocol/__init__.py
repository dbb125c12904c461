"""Tests of iceserv.protocol (a package so its module names cannot clash with other test dirs)."""
