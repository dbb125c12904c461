"""A cached Debian 12 (bookworm) root for the package tests, built once by debootstrap.

Like tests/service/test_openrc.py, the root lives under ``/var/cache/iceserv-test/``
keyed by its suite, mirror and package list, and is built under a lock so
parallel runs share it; tests only ever use it as the lower layer of an
overlay, so it is never modified.  It holds what installing ``iceserv_*.deb``
needs (so ``apt-get install ./iceserv_*.deb`` downloads nothing), a compiler for
``icecc gcc``, a real systemd with D-Bus to boot with ``systemd-nspawn``, and
Debian's own ``icecc`` package (for the replace-icecc scenarios) and
``openrc`` (for the OpenRC scenario, which installs it in its copy)
downloaded, not installed.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

CACHE = Path("/var/cache/iceserv-test")
MIRROR = os.environ.get("ICESERV_DEBIAN_MIRROR", "http://deb.debian.org/debian")
SUITE = "bookworm"
#: The package's run-time dependencies, gcc for the fallback compile, systemd + dbus to boot.
PACKAGES = (
    "python3", "libpython3.11", "liblzo2-2", "adduser", "logrotate", "gcc", "libc6-dev",
    "systemd", "systemd-sysv", "dbus", "procps", "iproute2",
)  # fmt: skip
#: Downloaded into /var/cache/apt/archives only: Debian's icecc (the replace-icecc
#: scenarios) and openrc (installed by the OpenRC scenario, ``openrc.sh``).
DOWNLOAD_ONLY = ("icecc", "openrc")
LAYOUT_VERSION = "1"  # bump when the steps after debootstrap change


def _run(argv: list[str], timeout: float) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        tail = f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        msg = f"{argv[:3]} failed ({proc.returncode}):\n{tail}"
        raise RuntimeError(msg)


def cached_root() -> Path:
    """Return the cached root, building it first if needed (cold: a few minutes)."""
    key = hashlib.sha256(
        f"{SUITE} {MIRROR} {','.join(PACKAGES)} {','.join(DOWNLOAD_ONLY)} {LAYOUT_VERSION}".encode()
    ).hexdigest()[:12]
    root = CACHE / f"deb-{SUITE}-{key}"
    if (root / ".iceserv-complete").exists():
        return root
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (root / ".iceserv-complete").exists():
            return root
        partial = root.with_name(root.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        _run(["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
              SUITE, str(partial), MIRROR], timeout=1800)  # fmt: skip
        # apt lists, so that apt-get can resolve (and --download-only fetch) icecc.
        # chroot's own resolv.conf: debootstrap copies the host's.
        _run(["chroot", str(partial), "apt-get", "update", "-qq"], timeout=600)
        _run(["chroot", str(partial), "apt-get", "install", "-y", "-qq", "--download-only",
              "--no-install-recommends", *DOWNLOAD_ONLY], timeout=600)  # fmt: skip
        # A machine id and a root password-less login are not needed: nspawn makes the id.
        (partial / "etc/machine-id").write_text("")
        (partial / ".iceserv-complete").write_text(" ".join(PACKAGES) + "\n")
        partial.rename(root)
    return root


if __name__ == "__main__":
    print(cached_root())  # noqa: T201 - warm the cache by hand: python tests/packaging/debroot.py
