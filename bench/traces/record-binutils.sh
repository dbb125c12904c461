#!/bin/sh
# Record bench/traces/binutils.jsonl: GNU binutils 2.40 (Debian's binutils-source 2.40-2:
# bfd, opcodes, libiberty, zlib, gas, ld, binutils, gold in C++) built with make -j2.
# Needs: apt-get install binutils-source flex bison texinfo.  Takes about 5 minutes on 2 cores.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
work=${WORK:-/tmp/trace-build}
python=${PYTHON:-python3}
mkdir -p "$work" && cd "$work"
rm -rf binutils-2.40 && tar xf /usr/src/binutils/binutils-2.40.tar.xz && cd binutils-2.40
./configure --disable-gdb --disable-gdbserver --disable-sim --disable-gprofng --enable-gold \
    --disable-werror --disable-nls --disable-libctf > ../binutils-configure.log 2>&1
make -j2 configure-host > ../binutils-configure-host.log 2>&1
"$python" "$here/record.py" run --out "$here/binutils.jsonl" --submitter dev1 \
    --root "$PWD" -- make -j2 all-host
