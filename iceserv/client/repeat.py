"""``ICECC_REPEAT_RATE``: compile a job on three servers and compare (reference §8.6).

Owns 1.4's repeat mode (``build_remote`` with ``torepeat == 3`` in
``client/remote.cpp``): for the given per-mille of gcc jobs the source is
preprocessed once into a temporary ``.ix`` file, ``-frandom-seed=<n>`` is
added, one GET_CS asks for three servers, each of the three USE_CS answers
compiles the same source (the first into the real output, the others into
temporary files, only the first one's output is shown), and the objects'
md5 sums are compared.  A mismatch keeps the evidence as ``<output>.caught``
and ``<source>.ix.caught`` and fails the job; a server that failed while the
first succeeded fails it too.  Any cluster error makes the whole job a local
build (1.4's error 27).  Unlike 1.4, which forks three children, the three
compiles run one after the other.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile

from iceserv.client.channel import ClusterError
from iceserv.client.job import REMOTE, absolute
from iceserv.client.local import HostLock, find_compiler, spawn, wait
from iceserv.client.remote import Remote
from iceserv.protocol import Feature, UseCS
from iceserv.protocol.features import supports
from iceserv.protocol.filenames import shorten_filename
from iceserv.protocol.records import replace

TYPE_CHECKING = False
if TYPE_CHECKING:
    import random
    from typing import Final

    from iceserv.client.job import CompileJob

__all__ = ["build_repeated", "wants_repeat"]

COPIES: Final = 3
_SELF: Final = "127.0.0.1"


def wants_repeat(remote: Remote, rng: random.Random) -> bool:
    """1.4: gcc jobs only, ``rand() % 1000 < ICECC_REPEAT_RATE``."""
    return not remote.job.is_clang and rng.randrange(1000) < remote.env.repeat_rate


def _preprocess(remote: Remote) -> tuple[str, int]:
    """Preprocess the job into a temporary file; return its path and the status."""
    job = remote.job
    fd, path = tempfile.mkstemp(prefix="icecc", suffix=".ix")
    argv = job.cpp_argv(
        find_compiler(job, remote.env, remote.own), remote.env, lambda p: os.access(p, os.R_OK)
    )
    lock = HostLock()
    if not lock.acquire():
        os.close(fd)
        return path, 100
    try:
        pid = spawn(argv, remote.env.child_environ(2), stdout=fd)
    except OSError:
        return path, 127
    finally:
        os.close(fd)
        lock.release()
    return path, wait(pid)[0]


def _remove(*paths: str) -> None:
    for path in paths:
        with contextlib.suppress(OSError):
            os.unlink(path)  # noqa: PTH108 - plain os in the wrapper


def _md5(path: str) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with open(path, "rb") as handle:  # noqa: PTH123
            while block := handle.read(1 << 16):
                digest.update(block)
    except OSError:
        return ""
    return digest.hexdigest()


def build_repeated(remote: Remote, rng: random.Random) -> int:
    """Compile *remote*'s job on three servers; the first one's status, or -1 on mismatch."""
    if not any(e.name for e in remote.envs):
        raise ClusterError(22, "$ICECC_VERSION needs to point to .tar files")
    source, status = _preprocess(remote)
    if status != 0:
        _remove(source)
        return status
    job = remote.job.evolve(
        args=(*remote.job.args, (f"-frandom-seed={rng.getrandbits(31)}", REMOTE))
    )
    first = Remote(
        job,
        remote.daemon,
        remote.envs,
        env=remote.env,
        diag=remote.diag,
        cwd=remote.cwd,
        platform=remote.platform,
        own=remote.own,
    )
    minimal = first.minimal_version(0)  # repeated jobs ask for no environment features
    remote.daemon.send(
        replace(
            first.get_cs(),
            filename=shorten_filename(absolute(job.input_file, remote.cwd)),
            count=COPIES,
            required_features=0,
            minimal_host_version=minimal,
            ignore_unverified=int(supports(minimal, Feature.VERIFY_ENV)),
        )
    )
    jobs = [job] + [job.evolve(output_file=_temporary(".o")) for _ in range(COPIES - 1)]
    codes: list[int] = []
    try:
        for index, each in enumerate(jobs):
            use = remote.wait_for_server()
            if not isinstance(use, UseCS):
                raise ClusterError(1, "expected use_cs reply")  # noqa: TRY301 - as in run()
            worker = Remote(
                each,
                remote.daemon,
                remote.envs,
                env=remote.env,
                diag=remote.diag,
                cwd=remote.cwd,
                platform=remote.platform,
                own=remote.own,
                source=source,
                output=index == 0,
            )
            here = use.hostname == _SELF and not (remote.env.test_remotebuild and use.port)
            codes.append(worker.compile_here(use) if here else worker.compile_there(use))
    except ClusterError as exc:
        for each in jobs:
            _remove(each.output_file, each.dwo_file())
        _remove(source)
        raise ClusterError(27, f"misc error: {exc}") from None
    return _compare(jobs, codes, source, remote)


def _compare(jobs: list[CompileJob], codes: list[int], source: str, remote: Remote) -> int:
    """1.4's check of the copies against the first; the first one's status or -1."""
    result, digest = codes[0], _md5(jobs[0].output_file)
    for each, code in zip(jobs[1:], codes[1:], strict=True):
        if result == 0 and code != 0:
            remote.diag.error(
                f"a copy compiled with exit code {code} and the first with 0 - aborting!"
            )
            _remove(jobs[0].output_file, jobs[0].dwo_file())
            result = -1
        elif result == 0 and _md5(each.output_file) != digest:
            remote.diag.error(
                f"{jobs[0].output_file} compiled differently on another server - aborting!"
            )
            for path in (jobs[0].output_file, source, jobs[0].dwo_file()):
                with contextlib.suppress(OSError):
                    os.rename(path, path + ".caught")  # noqa: PTH104
            result = -1
        _remove(each.output_file, each.dwo_file())
    _remove(source)
    return result


def _temporary(suffix: str) -> str:
    """1.4 ``dcc_make_tmpnam``: a fresh file under the temporary directory."""
    fd, path = tempfile.mkstemp(prefix="icecc", suffix=suffix)
    os.close(fd)
    return path
