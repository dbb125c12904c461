"""Programs that misbehave on purpose, for the tests of what iceserv refuses (issue 14)."""
