#!/bin/sh
# Record bench/traces/libuv.jsonl: libuv 1.48 as vendored in uvloop 0.21.0's source
# distribution (PyPI, sha256 below), C: the library and its test runner (about 400 small
# translation units), built with make -j2.  Needs autotools' output only (shipped in the
# tarball).  Takes about 4 minutes on 2 cores.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
work=${WORK:-/tmp/trace-build}
python=${PYTHON:-python3}
sha=3bf12b0fda68447806a7ad847bfa591613177275d35b6724b1ee573faa3704e3
mkdir -p "$work" && cd "$work"
if [ ! -f uvloop-0.21.0.tar.gz ]; then
    # pip leaves the tarball behind even though preparing its metadata fails offline
    "$python" -m pip download --no-binary :all: --no-deps --no-build-isolation \
        uvloop==0.21.0 -d . > pip-download.log 2>&1 || true
    [ -f uvloop-0.21.0.tar.gz ] || cp /tmp/pip-unpack-*/uvloop-0.21.0.tar.gz .
fi
echo "$sha  uvloop-0.21.0.tar.gz" | sha256sum -c -
rm -rf uvloop-0.21.0 && tar xzf uvloop-0.21.0.tar.gz && cd uvloop-0.21.0/vendor/libuv
./configure --disable-shared > "$work/libuv-configure.log" 2>&1
"$python" "$here/record.py" run --out "$here/libuv.jsonl" --submitter dev2 \
    --root "$PWD" -- make -j2 all test/run-tests
