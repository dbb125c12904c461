"""Tests of iceserv.scheduler (a package so its module names cannot clash with other test dirs)."""
