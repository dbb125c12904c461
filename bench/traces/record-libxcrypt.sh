#!/bin/sh
# Record bench/traces/libxcrypt.jsonl: libxcrypt 4.4.33 (Debian's libxcrypt-source 1:4.4.33-2),
# C, built with make -j2.  Needs: apt-get install libxcrypt-source autoconf automake libtool
# pkg-config.  Takes about a minute on 2 cores.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
work=${WORK:-/tmp/trace-build}
python=${PYTHON:-python3}
mkdir -p "$work" && cd "$work"
rm -rf libxcrypt && cp -r /usr/src/libxcrypt libxcrypt && cd libxcrypt
autoreconf -fi > ../libxcrypt-autoreconf.log 2>&1
./configure --disable-werror > ../libxcrypt-configure.log 2>&1
"$python" "$here/record.py" run --out "$here/libxcrypt.jsonl" --submitter dev2 \
    --root "$PWD" -- make -j2
