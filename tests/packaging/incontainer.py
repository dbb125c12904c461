"""Helpers run INSIDE the booted container with the package's interpreter.

``python3 incontainer.py listcs``: print the scheduler's telnet ``listcs``.
``python3 incontainer.py job TARBALL``: play a client of iceccd on 127.0.0.1:10245:
send an environment (TARBALL) and a compile job with part of its source, print
``STARTED``, then wait for a line on stdin before sending the rest; print
``RESULT <status> <object>``.  Uses only the installed package (iceserv.testing).
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

from iceserv.protocol import CompileFile, CompileResult, EnvTransfer, FileChunk
from iceserv.testing import BlockingChannel

_WAIT = 60.0


def listcs() -> int:
    """Print the telnet listing of the scheduler on 127.0.0.1:8766."""
    with socket.create_connection(("127.0.0.1", 8766), timeout=_WAIT) as sock:
        data = b""
        sock.sendall(b"listcs\r\n")
        while b"200 done" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    sys.stdout.write(data.decode(errors="replace").replace("\r", ""))
    return 0


def job(tarball: Path) -> int:
    """Run one remote job whose end the caller controls through stdin."""
    channel = BlockingChannel.connect("127.0.0.1", 10245, timeout=_WAIT)
    channel.send(EnvTransfer("fakeenv", "x86_64"))
    channel.send_file(tarball.read_bytes())
    channel.send(
        CompileFile(job_id=7, args=("-c",), environment="fakeenv", target="x86_64",
                    compiler_name="gcc", input_file="a.c", working_dir="/src", output_file="a.o"),
        FileChunk(b"int x;\n" * 1000),
    )  # fmt: skip
    print("STARTED", flush=True)  # noqa: T201
    sys.stdin.readline()
    channel.send(FileChunk(b"int y;\n"))
    channel.send_file(b"")
    result = channel.receive()
    if not isinstance(result, CompileResult):
        print(f"RESULT bad {result!r}", flush=True)  # noqa: T201
        return 1
    obj, _ = channel.receive_file()
    print(f"RESULT {result.status} {obj.decode().strip()}", flush=True)  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(listcs() if sys.argv[1] == "listcs" else job(Path(sys.argv[2])))
