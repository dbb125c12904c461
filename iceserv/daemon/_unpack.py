"""The environment unpacker process: stdin (a tarball) into one directory, result on stdout.

The daemon runs ``python -P -m iceserv.daemon._unpack DEST MAX_BYTES
MAX_MEMBERS NICE AS_LIMIT UID GID``; it switches to the unprivileged job
user itself once Python and the decompressors are loaded (the interpreter
may live where that user cannot read) and lowers its priority, as 1.4
extracts environments as that user, niced.  The daemon writes the
TRANFER_ENV chunks to its stdin and reads one JSON line from its stdout:
``{"size": N}`` or ``{"error": TEXT}``.  Running it as a separate
process with an address-space limit is the second line of defence behind
:mod:`iceserv.daemon.tarballs`: even a missed check could only write where
that user may, and a memory bomb only kills this process.  It owns no logic of its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import sys
from pathlib import Path

from iceserv.daemon.tarballs import TarballError, UnpackLimits, unpack

with contextlib.suppress(ImportError):
    import zstandard  # noqa: F401 - loaded before dropping privileges, used by tarballs


def main(argv: list[str]) -> int:
    """Unpack stdin into ``argv[0]``; print the JSON result; return 0 on success."""
    dest, max_bytes, max_members, nice, as_limit, uid, gid = argv
    if int(uid) >= 0:
        os.setgroups([])
        os.setgid(int(gid))
        os.setuid(int(uid))
    if int(as_limit) > 0:
        resource.setrlimit(resource.RLIMIT_AS, (int(as_limit), int(as_limit)))
    os.nice(int(nice))
    try:
        size = unpack(sys.stdin.buffer, Path(dest), UnpackLimits(int(max_bytes), int(max_members)))
    except TarballError as exc:
        result: dict[str, object] = {"error": str(exc)}
    except MemoryError:
        result = {"error": "environment needs too much memory to unpack"}
    else:
        result = {"size": size}
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0 if "size" in result else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
