"""iceserv's protocol codec against the real icecream 1.4 programs (issue 2, item 4).

(a) our codec logs in to a real ``icecc-scheduler`` as a daemon and shows up in
its telnet ``listcs``; (b) our codec is the client of a real ``iceccd``: it gets
a job from the real scheduler, ships a real ``icecc-create-env`` tarball,
verifies it, sends COMPILE_FILE and preprocessed source, and receives an
object file identical to a local ``gcc -c`` -- at protocol 43 (zstd) and 39
(LZO); (c) our discovery request, broadcast on a namespace bridge, is answered
by real schedulers and our chooser picks the right one.
"""

from __future__ import annotations

import json
import subprocess
import time
from typing import TYPE_CHECKING

import pytest
from testbed import RealScheduler, wait_for

from iceserv.protocol import (
    CompileFile,
    CompileResult,
    ConfCS,
    EnvEntry,
    EnvTransfer,
    Feature,
    GetCS,
    Lang,
    Login,
    Stats,
    UseCS,
    VerifyEnv,
    VerifyEnvResult,
)
from iceserv.testing import BlockingChannel

if TYPE_CHECKING:
    from pathlib import Path

    from testbed import RealDaemon, RealEnv

# Big enough that both the source and the tarball span several 100 000-byte chunks.
HELLO = (
    "#include <stdio.h>\n#include <stdlib.h>\n#include <string.h>\n"
    + "".join(f'int f{i}(int x) {{ return x * {i} + (int)strlen("{i}"); }}\n' for i in range(3000))
    + 'int main(void) { puts("hello from icecream"); return f7(6) == 0; }\n'
)


def _login(channel: BlockingChannel, name: str, *, max_kids: int = 2) -> ConfCS:
    channel.send(
        Login(port=0, max_kids=max_kids, nodename=name, host_platform="x86_64",
              chroot_possible=False, noremote=True, supported_features=3),
        Stats(load=100, load_avg1=250, load_avg5=200, load_avg10=150, free_mem=4096),
    )  # fmt: skip
    reply = channel.receive()
    assert isinstance(reply, ConfCS), reply
    return reply


class TestSchedulerLogin:
    def test_our_daemon_login_appears_in_the_real_listcs(self, real_scheduler: RealScheduler):
        """LOGIN + STATS through our codec make the real scheduler list our host with our load."""
        with real_scheduler.awake():
            channel = BlockingChannel.connect("127.0.0.1", real_scheduler.port or 0)
        try:
            assert channel.handshake.protocol == 43
            assert channel.handshake.peer_version == 43
            conf = _login(channel, "codec-node", max_kids=5)
            assert (conf.max_scheduler_pong, conf.max_scheduler_ping) == (3, 36)
            host = wait_for(
                lambda: next((h for h in real_scheduler.listcs() if h.name == "codec-node"), None),
                15, "our host in the real listcs",
            )  # fmt: skip
            assert (host.ip, host.port, host.platform) == ("127.0.0.1", 0, "x86_64")
            assert (host.max_jobs, host.load) == (5, 100)
        finally:
            channel.close()


def _compile_remotely(
    scheduler: RealScheduler, daemon: RealDaemon, env: RealEnv, workdir: Path, version: int
) -> tuple[CompileResult, bytes, BlockingChannel]:
    """Play the local daemon + client of a real remote compile; return result and object."""
    source = workdir / "hello.c"
    source.write_text(HELLO)
    preprocessed = subprocess.run(
        ["gcc", "-E", "-fdirectives-only", "hello.c"], cwd=workdir, capture_output=True,
        check=True, timeout=60,
    ).stdout  # fmt: skip
    assert len(preprocessed) > 100_000
    with scheduler.awake():
        submitter = BlockingChannel.connect("127.0.0.1", scheduler.port or 0)
    _login(submitter, "submitter", max_kids=0)
    submitter.send(
        GetCS(versions=(EnvEntry("x86_64", env.name),), filename="proj/hello.c", lang=Lang.C,
              count=1, target="x86_64", client_id=1, preferred_host=daemon.name,
              minimal_host_version=21, client_count=1)
    )  # fmt: skip
    use = submitter.receive()
    assert isinstance(use, UseCS), use
    assert (use.hostname, use.port, use.got_env) == ("127.0.0.1", daemon.port, False)

    remote = BlockingChannel.connect(use.hostname, use.port, version=version, timeout=120)
    assert remote.handshake.protocol == version
    remote.send(EnvTransfer(env.name, use.host_platform))
    remote.send_file(env.path.read_bytes())
    assert remote.conn.supports(Feature.VERIFY_ENV)
    remote.send(VerifyEnv(env.name, use.host_platform))
    assert remote.receive() == VerifyEnvResult(ok=True)
    remote.send(
        CompileFile(lang=Lang.C, job_id=use.job_id, args=("-O2", "-c", "-fdirectives-only"),
                    environment=env.name, target=use.host_platform, compiler_name="gcc",
                    input_file="hello.c", working_dir=str(workdir), output_file="hello.o")
    )  # fmt: skip
    remote.send_file(preprocessed)
    result = remote.receive()
    assert isinstance(result, CompileResult), result
    obj, _ = remote.receive_file() if result.status == 0 else (b"", 0)
    return result, obj, submitter


@pytest.mark.parametrize(("version", "compression"), [(43, "zstd"), (39, "lzo")])
class TestRemoteCompile:
    def test_object_from_real_iceccd_equals_local_gcc(  # noqa: PLR0913, PLR0917 - fixtures
        self, real_scheduler, real_daemon_factory, real_gcc_env, tmp_path, version, compression
    ):
        """A real iceccd compiles our shipped job; its object is byte-identical to gcc -c."""
        daemon = real_daemon_factory("compiler", real_scheduler)
        daemon.wait_logged_in(real_scheduler)
        result, obj, submitter = _compile_remotely(
            real_scheduler, daemon, real_gcc_env, tmp_path, version
        )
        # Every FILE_CHUNK both ways used this algorithm (a mismatch fails decoding).
        assert (version >= 40) == (compression == "zstd")
        try:
            assert result.status == 0, result.err
            assert not result.was_out_of_memory
            assert not result.have_dwo
            subprocess.run(["gcc", "-O2", "-c", "hello.c", "-o", "local.o"], cwd=tmp_path,
                           check=True, timeout=60)  # fmt: skip
            assert obj == (tmp_path / "local.o").read_bytes()
            # The server's JOB_DONE statistics reached the scheduler: it now rates its speed.
            wait_for(
                lambda: next(h for h in real_scheduler.listcs() if h.name == "compiler").speed > 0,
                15, "the compile server's speed rating after JOB_DONE",
            )  # fmt: skip
        finally:
            submitter.close()


DISCOVER = r"""
import json, socket, sys, time
from iceserv.protocol.discovery import choose_scheduler, decode_reply, encode_request
broadcast, wanted = sys.argv[1], sys.argv[2:]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
s.bind(("", 0))
s.sendto(encode_request(), (broadcast, 8765))
replies, deadline = [], time.monotonic() + 3
while (left := deadline - time.monotonic()) > 0:
    s.settimeout(left)
    try:
        data, origin = s.recvfrom(1024)
    except TimeoutError:
        break
    info = decode_reply(data)
    if info is not None:
        replies.append((origin[0], info))
out = {"replies": [[ip, i.version, i.start_time, i.netname] for ip, i in replies]}
for name in wanted:
    best = choose_scheduler(replies, name)
    out[name] = None if best is None else best[0]
print(json.dumps(out))
"""


class TestDiscovery:
    def test_broadcast_reaches_real_schedulers_and_we_pick_like_14(self, netns_hosts):
        """Replies of three real schedulers arrive over the bridge; netname and age decide."""
        h1, h2, h3, h4 = netns_hosts(4)
        with RealScheduler(host=h1, netname="ALPHA") as alpha_old:
            # Start times have a resolution of one second: the next ones must start later.
            ready = int(time.time())
            wait_for(lambda: int(time.time()) > ready, 3.0, "the next second of the wall clock")
            with (
                RealScheduler(host=h2, netname="BETA"),
                RealScheduler(host=h3, netname="ALPHA") as alpha_new,
            ):
                assert alpha_old.port == alpha_new.port == 8765
                bed_broadcast = h1.ip.rsplit(".", 1)[0] + ".255"
                proc = h4.python(DISCOVER, bed_broadcast, "alpha", "Beta", "GAMMA",
                                 capture_output=True)  # fmt: skip
        found = json.loads(proc.stdout)
        by_ip = {ip: (version, start, name) for ip, version, start, name in found["replies"]}
        assert set(by_ip) == {h1.ip, h2.ip, h3.ip}
        assert {v for v, _, _ in by_ip.values()} == {43}
        assert by_ip[h1.ip][1] < by_ip[h3.ip][1]
        assert found["alpha"] == h1.ip  # case-insensitive, and the longest running wins
        assert found["Beta"] == h2.ip
        assert found["GAMMA"] is None
