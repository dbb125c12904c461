"""Tests of iceserv.config (a package so its module names cannot clash with other test dirs)."""
