"""Long-running fuzz targets (run on demand, never part of the test suite).

``targets`` holds one function per target that takes raw bytes and may let
only iceserv's own errors (``IceservError``) escape; ``run`` drives them
with Atheris (libFuzzer) when it is installed, or with a seeded
random-mutation loop of its own.  See ``docs/benchmarks.md`` for the
commands and the latest counts.
"""
