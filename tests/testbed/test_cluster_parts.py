"""Self-tests of the cluster parts of the bed: monitor decoding, placement, project, idle CPU.

The end-to-end builds that use them are in ``tests/integration/test_e2e_builds.py``;
these check the pieces that a wrong result there could come from, without a cluster.
"""

from __future__ import annotations

import io
import struct
import subprocess
import tarfile
from collections import Counter
from pathlib import Path

import pytest
from testbed import LOOPBACK, IdleCpuHost, Placement, TestbedError, freeze_proc_stat
from testbed.cluster import BuildResult
from testbed.monitor import MonitorEvent, split_frames
from testbed.project import ZSTD_SDIST, Project, unpack_project


def _string(text: str) -> bytes:
    data = text.encode() + b"\0"
    return struct.pack(">I", len(data)) + data


def _frame(kind: str, payload: bytes) -> bytes:
    return struct.pack(">II", len(payload) + 4, ord(kind)) + payload


class TestMonitorDecoding:
    def test_every_event_a_build_produces(self):
        """MON_STATS, MON_GET_CS, MON_JOB_BEGIN/DONE, local jobs and END decode as in §2.2."""
        done = struct.pack(">Ii", 7, -1) + bytes(40)  # job id, exit code, 10 more fields
        stream = b"".join([
            _frame("W", struct.pack(">I", 2) + _string("Name:h2\nIP:10.0.0.2\n")),
            _frame("S", _string("lib/common/debug.c") + struct.pack(">III", 0, 7, 1)),
            _frame("T", struct.pack(">III", 7, 1700000000, 2)),
            _frame("U", done),
            _frame("V", struct.pack(">III", 1, 8, 1700000001) + _string("obj/prog")),
            _frame("O", struct.pack(">I", 8)),
            _frame("C", b""),
        ])  # fmt: skip
        events, rest = split_frames(stream)
        assert rest == b""
        assert events == [
            MonitorEvent("MON_STATS", host_id=2, text="Name:h2\nIP:10.0.0.2\n"),
            MonitorEvent("MON_GET_CS", host_id=1, job_id=7, text="lib/common/debug.c"),
            MonitorEvent("MON_JOB_BEGIN", host_id=2, job_id=7),
            MonitorEvent("MON_JOB_DONE", job_id=7, exitcode=-1),
            MonitorEvent("MON_LOCAL_JOB_BEGIN", host_id=1, job_id=8, text="obj/prog"),
            MonitorEvent("JOB_LOCAL_DONE", job_id=8),
            MonitorEvent("END"),
        ]

    def test_partial_frame_waits_for_the_rest(self):
        """An incomplete frame stays in the buffer until its bytes arrive."""
        frame = _frame("T", struct.pack(">III", 1, 2, 3))
        events, rest = split_frames(frame[:-1])
        assert (events, rest) == ([], frame[:-1])
        assert split_frames(rest + frame[-1:])[0] == [MonitorEvent("MON_JOB_BEGIN", 3, 1)]

    def test_oversized_frame_is_an_error(self):
        """A length above 1 MiB is refused (§1.5)."""
        with pytest.raises(TestbedError):
            split_frames(struct.pack(">II", (1 << 20) + 1, ord("T")))


def _result(**changes: object) -> BuildResult:
    values: dict[str, object] = {
        "host": "h1-real", "client": "real", "returncode": 0, "seconds": 1.0, "output": "",
        "units": 3, "different": (), "missing": (),
        "placement": Placement(Counter({"h1-real": 1, "h2-ours": 2}), [], Counter(), 3),
    } | changes  # fmt: skip
    return BuildResult(**values)  # type: ignore[arg-type]


class TestBuildResult:
    def test_a_right_build_has_no_problems(self):
        """Status 0, identical objects, every unit placed once, both hosts used: no problem."""
        assert _result().problems(on=["h1-real", "h2-ours"]) == []

    @pytest.mark.parametrize(("changes", "problem"), [
        ({"returncode": 2}, "make failed"),
        ({"different": ("obj/a.o",)}, "objects differ"),
        ({"missing": ("obj/a.o",)}, "objects differ"),
        ({"placement": Placement(Counter({"h1-real": 3}), [], Counter(), 3)},
         "no job ran on h2-ours"),
        ({"placement": Placement(Counter({"h1-real": 1, "h2-ours": 1}), [], Counter(), 2)},
         "expected 3 jobs"),
        ({"placement": Placement(Counter({"h1-real": 1, "h2-ours": 2}), [("h2-ours", 1)],
                                 Counter(), 3)}, "jobs failed"),
        ({"placement": Placement(Counter({"h1-real": 1, "h2-ours": 2}), [],
                                 Counter({"h1-real": 1}), 3)}, "local-only"),
    ])  # fmt: skip
    def test_each_fault_is_reported(self, changes, problem):
        """Every way a build can go wrong shows up in ``problems`` and makes ``check`` fail."""
        result = _result(**changes)
        assert any(problem in text for text in result.problems(on=["h1-real", "h2-ours"]))
        with pytest.raises(AssertionError, match="make on h1-real"):
            result.check(on=["h1-real", "h2-ours"])


def _fake_sdist(path: Path) -> Path:
    files = {
        f"{ZSTD_SDIST.library}/zstd.h": "int zstd_version(void);\n",
        f"{ZSTD_SDIST.library}/common/a.c": '#include "a.h"\nint a(void) { return A; }\n',
        f"{ZSTD_SDIST.library}/common/a.h": "#define A 1\n",
        f"{ZSTD_SDIST.library}/decompress/b.c": "int b(void) { return 2; }\n",
        f"{ZSTD_SDIST.library}/decompress/b_amd64.S": "nop\n",
        f"{ZSTD_SDIST.library}/dll/example.c": "int example;\n",
        "zstd-1.5.7.2/src/python-zstd.c": "#include <Python.h>\n",
    }
    with tarfile.open(path, "w:gz") as archive:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


class TestProject:
    def test_unpacks_the_library_and_writes_a_makefile(self, tmp_path):
        """Only lib/{common,compress,decompress,legacy} C and headers are kept, one object each."""
        project = unpack_project(_fake_sdist(tmp_path / "z.tar.gz"), tmp_path / "tree")
        assert project.sources == ("lib/common/a.c", "lib/decompress/b.c")
        assert project.objects == ("obj/common/a.o", "obj/decompress/b.o")
        assert (project.root / "lib/zstd.h").is_file()
        assert not (project.root / "lib/decompress/b_amd64.S").exists()
        assert not (project.root / "lib/dll").exists()

    def test_make_builds_every_object_and_compare_finds_differences(self, tmp_path):
        """make -j2 builds all objects; compare names a changed and a missing object."""
        project = unpack_project(_fake_sdist(tmp_path / "z.tar.gz"), tmp_path / "tree")
        subprocess.run(project.make_argv("gcc", 2), cwd=project.root, check=True, timeout=60,
                       capture_output=True)  # fmt: skip
        built = project.read_objects()
        assert sorted(built) == ["obj/common/a.o", "obj/decompress/b.o"]
        assert project.compare(built) == ([], [])
        (project.root / "obj/common/a.o").unlink()
        assert project.compare({**built, "obj/decompress/b.o": b"x"}) == (
            ["obj/decompress/b.o"], ["obj/common/a.o"])  # fmt: skip
        project.clean()
        assert project.read_objects() == {}

    def test_pinned_sdist_name(self):
        """The pinned archive is the zstd 1.5.7.2 sdist with a full sha256."""
        assert ZSTD_SDIST.filename == "zstd-1.5.7.2.tar.gz"
        assert len(bytes.fromhex(ZSTD_SDIST.sha256)) == 32
        assert Project(Path("/x"), ("lib/legacy/v.c",)).objects == ("obj/legacy/v.o",)


class TestIdleCpuHost:
    def test_programs_see_a_frozen_proc_stat_and_nothing_stays_mounted(self, tmp_path):
        """Two reads a moment apart are identical inside; the machine's mounts are unchanged."""
        stat = freeze_proc_stat(tmp_path / "stat")
        host = IdleCpuHost(LOOPBACK, stat)
        mounts = Path("/proc/mounts").read_text()
        seen = host.run(["sh", "-c", "head -1 /proc/stat; sleep 0.3; head -1 /proc/stat"],
                        capture_output=True, text=True, timeout=30).stdout.splitlines()  # fmt: skip
        assert seen == [stat.read_text().splitlines()[0]] * 2
        assert Path("/proc/mounts").read_text() == mounts
        assert host.name == LOOPBACK.name
        assert host.ip == LOOPBACK.ip
