"""Tests of iceserv.app.keygen: ``iceserv keygen PATH`` (issue 14)."""

from __future__ import annotations

import grp
import os
import stat

from iceserv.app.cli import main
from iceserv.config.keyfile import read_key


class TestKeygen:
    def test_writes_a_private_key(self, tmp_path, capsys):
        """The new key has mode 0640, 64 bytes, and the group icecream when it exists."""
        path = tmp_path / "network.key"
        assert main(["keygen", str(path)]) == 0
        info = path.stat()
        assert stat.S_IMODE(info.st_mode) == 0o640
        assert len(read_key(path)) == 64
        try:
            wanted = grp.getgrnam("icecream").gr_gid
        except KeyError:
            wanted = os.getegid()
        if os.geteuid() == 0 or wanted == os.getegid():
            assert info.st_gid == wanted
        assert f"{path}: new network key (mode 0640" in capsys.readouterr().out

    def test_refuses_to_overwrite(self, tmp_path, capsys):
        """An existing file is kept and the command fails with EX_CANTCREAT."""
        path = tmp_path / "network.key"
        path.write_bytes(b"old")
        assert main(["keygen", str(path)]) == os.EX_CANTCREAT
        assert path.read_bytes() == b"old"
        assert "exists; a key is never overwritten" in capsys.readouterr().err

    def test_unwritable_directory(self, tmp_path, capsys):
        """A path in a missing directory is a clear error."""
        assert main(["keygen", str(tmp_path / "no" / "key")]) == os.EX_CANTCREAT
        assert "No such file or directory" in capsys.readouterr().err
