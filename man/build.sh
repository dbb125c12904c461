#!/bin/sh
# Regenerate the roff man pages from their scdoc sources (man/*.scd).
# The generated pages are committed, so neither users nor CI need scdoc;
# tests/service/test_man.py checks they are current when scdoc is installed.
# The date is fixed so the output is reproducible.
set -eu
cd "$(dirname "$0")"
SOURCE_DATE_EPOCH=1795651200  # 2026-11-26: bump when the pages change meaningfully
export SOURCE_DATE_EPOCH
for source in *.scd; do
	scdoc < "$source" > "${source%.scd}"
done
