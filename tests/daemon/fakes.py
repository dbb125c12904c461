"""A fake compiler environment for daemon tests: a static C program as /usr/bin/gcc.

The fake reads all of stdin, then behaves as ``-mode=`` says (``ok``,
``error``, ``oom``, ``crash``, ``noout``, ``slow``) and on success writes
``OBJ <bytes read>`` to its ``-o`` file and prints its uid, gid and cwd.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from typing import TYPE_CHECKING

import pytest

from iceserv.daemon.sandbox import RunAs

if TYPE_CHECKING:
    from pathlib import Path

FAKE_COMPILER = r"""
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
extern char **environ;
int main(int argc, char **argv) {
    const char *out = 0, *mode = "ok";
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-o") && i + 1 < argc) out = argv[++i];
        else if (!strncmp(argv[i], "-mode=", 6)) mode = argv[i] + 6;
    }
    char buf[65536];
    size_t n, total = 0;
    while ((n = fread(buf, 1, sizeof buf, stdin)) > 0) total += n;
    if (!strcmp(mode, "crash")) raise(SIGSEGV);
    if (!strcmp(mode, "oom")) {
        fputs("cc1: out of memory allocating 65536 bytes\n", stderr);
        return 1;
    }
    if (!strcmp(mode, "error")) { fputs("x.c:1:1: error: nope\n", stderr); return 1; }
    if (!strcmp(mode, "noout")) return 0;
    if (!strcmp(mode, "slow")) sleep(2);
    if (!strcmp(mode, "env")) { for (char **e = environ; *e; e++) puts(*e); return 0; }
    printf("uid=%d gid=%d cwd=%s\n", (int)getuid(), (int)getgid(), getcwd(buf, sizeof buf));
    if (!out) return 0; /* bin/true for VERIFY_ENV */
    FILE *f = fopen(out, "w");
    if (!f) return 3;
    fprintf(f, "OBJ %zu\n", total);
    fclose(f);
    return 0;
}
"""


def build_fake_env(root: Path) -> tuple[Path, RunAs]:
    """Make *root* an environment whose /usr/bin/gcc (and as) is the fake compiler.

    Skips the calling test unless it runs as root (chroot needs it).
    """
    if os.geteuid() != 0:
        pytest.skip("chroot needs root")
    root.chmod(0o755)  # the job user must be able to enter / of its chroot
    source = root.parent / f"{root.name}-fake.c"
    source.write_text(FAKE_COMPILER)
    (root / "usr/bin").mkdir(parents=True)
    subprocess.run(["gcc", "-static", "-O1", str(source), "-o", str(root / "usr/bin/gcc")],
                   check=True, timeout=60)  # fmt: skip
    shutil.copy2(root / "usr/bin/gcc", root / "usr/bin/as")
    (root / "bin").mkdir()
    shutil.copy2(root / "usr/bin/gcc", root / "bin/true")
    user = pwd.getpwnam("icecc")
    (root / "tmp").mkdir(mode=0o1775)
    os.chown(root / "tmp", user.pw_uid, user.pw_gid)
    return root, RunAs("icecc", user.pw_uid, user.pw_gid, switch=True)
