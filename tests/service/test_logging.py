"""Tests for iceserv.service.logging: format choice, the three renderings, levels, log files."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import socket
import struct

import pytest
import structlog

from iceserv.service.logging import (
    AppendFileHandler,
    JournalHandler,
    LogFormat,
    choose_format,
    configure_logging,
    encode_journal,
    level_for,
)


@pytest.fixture
def setups():
    made = []
    yield made
    for setup in reversed(made):
        setup.close()


def _configure(setups, **kwargs):
    setup = configure_logging(**kwargs)
    setups.append(setup)
    return setup


def _identity(path):
    info = path.stat()
    return f"{info.st_dev}:{info.st_ino}"


class TestChooseFormat:
    def test_tty_is_console(self):
        """On a terminal, auto means the console renderer."""
        master, slave = os.openpty()
        with os.fdopen(slave, "w") as stream:
            assert choose_format(LogFormat.AUTO, stream, None) is LogFormat.CONSOLE
        os.close(master)

    def test_journal_when_journal_stream_is_our_stderr(self, tmp_path):
        """auto is journal when $JOURNAL_STREAM names the very stream we write to."""
        path = tmp_path / "stream"
        with path.open("w") as stream:
            assert choose_format(LogFormat.AUTO, stream, _identity(path)) is LogFormat.JOURNAL

    def test_json_when_journal_stream_is_another_file(self, tmp_path):
        """An inherited $JOURNAL_STREAM for a redirected stderr does not mean journal."""
        other = tmp_path / "other"
        other.write_text("")
        with (tmp_path / "stream").open("w") as stream:
            assert choose_format(LogFormat.AUTO, stream, _identity(other)) is LogFormat.JSON

    def test_json_otherwise_and_for_files(self):
        """A pipe or file gets JSON; -l FILE gets JSON even on a terminal."""
        assert choose_format(LogFormat.AUTO, io.StringIO(), None) is LogFormat.JSON
        master, slave = os.openpty()
        with os.fdopen(slave, "w") as stream:
            assert choose_format(LogFormat.AUTO, stream, None, to_file=True) is LogFormat.JSON
        os.close(master)

    def test_request_wins(self, tmp_path):
        """An explicit --log-format is used as it is."""
        path = tmp_path / "stream"
        with path.open("w") as stream:
            assert choose_format(LogFormat.JSON, stream, _identity(path)) is LogFormat.JSON
            assert choose_format(LogFormat.CONSOLE, stream, None) is LogFormat.CONSOLE


class TestRendering:
    def test_json_lines(self, setups):
        """JSON mode: one object per line with event, fields, logger, level and an ISO time."""
        stream = io.StringIO()
        _configure(setups, verbosity=1, fmt=LogFormat.JSON, stream=stream)
        structlog.get_logger("iceserv.test").info("job_finished", job_id=17, exitcode=0)
        record = json.loads(stream.getvalue())
        assert record["event"] == "job_finished"
        assert (record["job_id"], record["exitcode"]) == (17, 0)
        assert (record["logger"], record["level"]) == ("iceserv.test", "info")
        assert record["timestamp"].endswith("Z")

    def test_journal_lines(self, setups):
        """Journal mode: <N> priority, logfmt, no timestamp, logger and level last."""
        stream = io.StringIO()
        _configure(setups, verbosity=1, fmt=LogFormat.JOURNAL, stream=stream)
        log = structlog.get_logger("iceserv.test")
        log.info("job_assigned", host="node2", job_id=17, file="a b.c")
        log.warning("monitor_dropped", peer="10.0.0.5")
        log.error("reload_failed", error='/etc/conf.d/iceccd:3: X="y"')
        assert stream.getvalue().splitlines() == [
            (
                '<6>event=job_assigned host=node2 job_id=17 file="a b.c" '
                "logger=iceserv.test level=info"
            ),
            "<4>event=monitor_dropped peer=10.0.0.5 logger=iceserv.test level=warning",
            (
                '<3>event=reload_failed error="/etc/conf.d/iceccd:3: X=\\"y\\"" '
                "logger=iceserv.test level=error"
            ),
        ]

    def test_journal_traceback_stays_on_one_line(self, setups):
        """An exception is rendered into the same journal line (journald splits on newlines)."""
        stream = io.StringIO()
        _configure(setups, verbosity=0, fmt=LogFormat.JOURNAL, stream=stream)
        try:
            1 / 0  # noqa: B018
        except ZeroDivisionError:
            structlog.get_logger("iceserv.test").exception("connection_failed")
        (line,) = stream.getvalue().splitlines()
        assert line.startswith("<3>event=connection_failed exception=")
        assert "ZeroDivisionError" in line

    def test_console(self, setups):
        """Console mode: the event name and key=value fields, readable."""
        stream = io.StringIO()
        _configure(setups, verbosity=1, fmt=LogFormat.CONSOLE, stream=stream)
        structlog.get_logger("iceserv.test").info("daemon_logged_in", nodename="n1")
        text = stream.getvalue()
        assert "daemon_logged_in" in text
        assert "nodename" in text
        assert "n1" in text
        assert not text.startswith("{")

    def test_foreign_records_share_the_pipeline(self, setups):
        """stdlib records from libraries (asyncio, dbus-fast) are rendered the same way."""
        stream = io.StringIO()
        _configure(setups, verbosity=0, fmt=LogFormat.JSON, stream=stream)
        logging.getLogger("asyncio").warning("Executing %s took %.3f seconds", "x", 0.5)
        record = json.loads(stream.getvalue())
        assert record["event"] == "Executing x took 0.500 seconds"
        assert (record["logger"], record["level"]) == ("asyncio", "warning")


class TestVerbosity:
    @pytest.mark.parametrize(
        ("verbosity", "shown"),
        [
            (0, {"warning"}),
            (1, {"warning", "info"}),
            (2, {"warning", "info", "debug"}),
            (3, {"warning", "info", "debug", "foreign-info"}),
        ],
    )
    def test_levels(self, setups, verbosity, shown):
        """-v adds info events, -vv debug events, -vvv the libraries' chatter."""
        stream = io.StringIO()
        _configure(setups, verbosity=verbosity, fmt=LogFormat.JSON, stream=stream)
        log = structlog.get_logger("iceserv.test")
        log.warning("warning")
        log.info("info")
        log.debug("debug")
        logging.getLogger("asyncio").info("foreign-info")
        events = {json.loads(line)["event"] for line in stream.getvalue().splitlines()}
        assert events == shown

    def test_level_for(self):
        """The -v count maps to 1.4's levels; out-of-range counts are clamped."""
        assert [level_for(v) for v in (-1, 0, 1, 2, 3, 9)] == [
            logging.WARNING, logging.WARNING, logging.INFO, logging.DEBUG, logging.DEBUG,
            logging.DEBUG,
        ]  # fmt: skip

    def test_reconfigure_changes_level_live(self, setups):
        """A reload's new verbosity applies to loggers created before it."""
        stream = io.StringIO()
        setup = _configure(setups, verbosity=0, fmt=LogFormat.JSON, stream=stream)
        log = structlog.get_logger("iceserv.test")
        log.info("before")
        setup.reconfigure(verbosity=1, fmt=LogFormat.JSON)
        log.info("after")
        assert [json.loads(x)["event"] for x in stream.getvalue().splitlines()] == ["after"]

    def test_main_module_counts_as_ours(self, setups):
        """Events of a program run with python -m (logger __main__) follow -v too."""
        stream = io.StringIO()
        _configure(setups, verbosity=1, fmt=LogFormat.JSON, stream=stream)
        structlog.get_logger("__main__").info("scheduler_ready")
        assert json.loads(stream.getvalue())["event"] == "scheduler_ready"


class TestLogFile:
    def test_survives_copytruncate(self, setups, tmp_path):
        """After logrotate's copy + truncate, new lines start the file again: no NUL hole."""
        path = tmp_path / "iceccd.log"
        setup = _configure(setups, verbosity=1, log_file=path, stream=io.StringIO())
        log = structlog.get_logger("iceserv.test")
        for n in range(20):
            log.info("before_rotation", n=n)
        shutil.copyfile(path, tmp_path / "iceccd.log.1")
        with path.open("r+") as f:
            f.truncate(0)
        log.info("after_rotation")
        data = path.read_bytes()
        assert b"\0" not in data
        (line,) = data.decode().splitlines()
        assert json.loads(line)["event"] == "after_rotation"
        assert len((tmp_path / "iceccd.log.1").read_text().splitlines()) == 20
        assert isinstance(setup.handler, AppendFileHandler)
        assert setup.handler.truncations == 1

    def test_reopens_after_rename(self, setups, tmp_path):
        """A rotation that renames the file makes the handler create a new one at the path."""
        path = tmp_path / "s.log"
        _configure(setups, verbosity=1, log_file=path, stream=io.StringIO())
        log = structlog.get_logger("iceserv.test")
        log.info("one")
        path.rename(tmp_path / "s.log.1")
        log.info("two")
        assert [json.loads(x)["event"] for x in path.read_text().splitlines()] == ["two"]
        assert "one" in (tmp_path / "s.log.1").read_text()

    def test_appends_to_existing_file(self, setups, tmp_path):
        """An existing log keeps its lines (append, never truncate on open)."""
        path = tmp_path / "a.log"
        path.write_text("old line\n")
        _configure(setups, verbosity=1, log_file=path, stream=io.StringIO())
        structlog.get_logger("iceserv.test").info("new_line")
        assert path.read_text().splitlines()[0] == "old line"

    def test_unwritable_file_raises(self, setups, tmp_path):
        """A log file that cannot be opened is an OSError for the caller to report."""
        with pytest.raises(OSError):
            _configure(setups, verbosity=0, log_file=tmp_path / "missing" / "x.log")

    def test_switch_file_on_reload(self, setups, tmp_path):
        """reconfigure() can move logging from the stream to a file."""
        stream = io.StringIO()
        setup = _configure(setups, verbosity=1, fmt=LogFormat.JSON, stream=stream)
        setup.reconfigure(verbosity=1, log_file=tmp_path / "new.log")
        structlog.get_logger("iceserv.test").info("moved")
        assert stream.getvalue() == ""
        assert "moved" in (tmp_path / "new.log").read_text()


def _parse_journal(data):
    """Decode one native-protocol datagram into {field: value} (as journald does)."""
    fields, rest = {}, data
    while rest:
        line, _, after = rest.partition(b"\n")
        if b"=" in line:
            name, _, value = line.partition(b"=")
            fields[name.decode()] = value.decode()
            rest = after
        else:
            (size,) = struct.unpack("<Q", after[:8])
            fields[line.decode()] = after[8 : 8 + size].decode()
            assert after[8 + size : 9 + size] == b"\n"
            rest = after[9 + size :]
    return fields


@pytest.fixture
def journald(tmp_path):
    """A datagram socket standing in for /run/systemd/journal/socket."""
    path = tmp_path / "journal.socket"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    yield path, sock
    sock.close()


@contextlib.contextmanager
def _journal_stream():
    """A stream like journald's stdout stream: a socket whose dev:inode is $JOURNAL_STREAM."""
    ours, peer = socket.socketpair()
    with ours, peer, ours.makefile("w") as stream:
        info = os.fstat(stream.fileno())
        yield stream, f"{info.st_dev}:{info.st_ino}", peer


class TestJournalNative:
    def test_encoding_of_multiline_values(self):
        """A value with a newline uses the length-prefixed form; others NAME=value."""
        data = encode_journal({"MESSAGE": "one", "TRACE": "a\nb"})
        assert data == b"MESSAGE=one\nTRACE\n" + struct.pack("<Q", 3) + b"a\nb\n"
        assert _parse_journal(data) == {"MESSAGE": "one", "TRACE": "a\nb"}

    def test_fields_reach_the_journal_socket(self, setups, journald):
        """Under journald ($JOURNAL_STREAM is our stream) each key is a journal field."""
        path, sock = journald
        with _journal_stream() as (stream, identity, peer):
            _configure(setups, verbosity=1, stream=stream, journal_stream=identity,
                       journal_socket=path, identifier="iceccd")  # fmt: skip
            log = structlog.get_logger("iceserv.test")
            log.info("job_done", job_id=17, host="node 2", message="clash", ok=True)
            fields = _parse_journal(sock.recv(65536))
            peer.settimeout(0)
            with pytest.raises(BlockingIOError):
                peer.recv(1)  # nothing on stderr
        assert fields["EVENT"] == "job_done"
        assert (fields["JOB_ID"], fields["HOST"], fields["OK"]) == ("17", "node 2", "true")
        assert fields["ICESERV_MESSAGE"] == "clash"  # journald's own names are not overwritten
        assert (fields["LOGGER"], fields["LEVEL"], fields["PRIORITY"]) == ("iceserv.test", "info",
                                                                          "6")  # fmt: skip
        assert fields["SYSLOG_IDENTIFIER"] == "iceccd"
        assert fields["MESSAGE"].startswith("event=job_done job_id=17 ")
        assert "TIMESTAMP" not in fields

    def test_traceback_is_one_field(self, setups, journald):
        """An exception travels as a multi-line EXCEPTION field, priority 3."""
        path, sock = journald
        with _journal_stream() as (stream, identity, _peer):
            _configure(setups, verbosity=0, stream=stream, journal_stream=identity,
                       journal_socket=path)  # fmt: skip
            try:
                1 / 0  # noqa: B018
            except ZeroDivisionError:
                structlog.get_logger("iceserv.test").exception("connection_failed")
            fields = _parse_journal(sock.recv(65536))
        assert fields["PRIORITY"] == "3"
        assert "ZeroDivisionError" in fields["EXCEPTION"]
        assert "\n" in fields["EXCEPTION"]

    def test_large_record_goes_in_a_memfd(self, journald):
        """A record bigger than a datagram is passed as a sealed memfd, as sd_journal_send does."""
        path, sock = journald
        handler = JournalHandler(path, io.StringIO(), identifier="t")
        handler._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        record = logging.LogRecord("iceserv.t", logging.INFO, __file__, 1, "m", None, None)
        handler.setFormatter(_FieldsFormatter({"MESSAGE": "x" * 300_000, "PRIORITY": "6"}))
        handler.emit(record)
        msg, fds, _, _ = socket.recv_fds(sock, 16, 1)
        handler.close()
        assert msg == b""
        (fd,) = fds
        with os.fdopen(fd, "rb") as memfd:
            memfd.seek(0)  # the offset is shared with the sender (journald mmaps it)
            fields = _parse_journal(memfd.read())
        assert fields["MESSAGE"] == "x" * 300_000
        assert fields["SYSLOG_IDENTIFIER"] == "t"

    def test_a_file_named_by_journal_stream_is_not_journald(self, setups, journald, tmp_path):
        """$JOURNAL_STREAM naming a regular file (a test, a redirect) keeps the stream format."""
        path, _sock = journald
        stream_path = tmp_path / "stderr"
        with stream_path.open("w") as stream:
            setup = _configure(setups, verbosity=1, stream=stream, journal_socket=path,
                               journal_stream=_identity(stream_path))  # fmt: skip
            structlog.get_logger("iceserv.test").info("job_done", job_id=4)
        assert not isinstance(setup.handler, JournalHandler)
        assert stream_path.read_text().startswith("<6>event=job_done job_id=4 ")

    def test_no_socket_falls_back_to_prefixed_lines(self, setups, tmp_path):
        """Under journald but without its native socket, stderr gets the <N> logfmt line."""
        with _journal_stream() as (stream, identity, peer):
            setup = _configure(setups, verbosity=1, stream=stream, journal_stream=identity,
                               journal_socket=tmp_path / "absent")  # fmt: skip
            structlog.get_logger("iceserv.test").info("job_done", job_id=3)
            stream.flush()
            peer.settimeout(5)
            line = peer.recv(65536).decode()
        assert not isinstance(setup.handler, JournalHandler)
        assert line.startswith("<6>event=job_done job_id=3 ")

    def test_socket_gone_later_falls_back(self, journald):
        """If journald goes away, records still reach the stream."""
        path, sock = journald
        stream = io.StringIO()
        handler = JournalHandler(path, stream, identifier="t")
        handler.setFormatter(_FieldsFormatter({"MESSAGE": "event=x", "PRIORITY": "4"}))
        sock.close()
        path.unlink()
        handler.emit(logging.LogRecord("iceserv.t", logging.WARNING, __file__, 1, "m", None, None))
        handler.close()
        assert stream.getvalue() == "<4>event=x\n"


class _FieldsFormatter(logging.Formatter):
    """Formats every record as the given journal fields (what journal_fields() returns)."""

    def __init__(self, fields):
        super().__init__()
        self._text = json.dumps(fields)

    def format(self, _record):
        return self._text
