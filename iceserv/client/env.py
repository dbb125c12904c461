"""Every environment variable the compiler wrapper honours, read once (reference §8.6).

Owns :class:`ClientEnv`, an immutable snapshot of ``ICECC_*`` and the few
other variables 1.4's ``icecc`` looks at (``PATH``, ``HOME``, ``TERM``,
``EMACS``, ``GCC_COLORS``, ``_ICECC_SAFEGUARD``), with 1.4's parsing rules
(``atoi``/``strtol`` quirks included), and the environment handed to the
programs the wrapper starts.  Only this module (and ``iceserv.config``)
reads the process environment; it must not import anything beyond the stdlib, and
nothing heavy from it: it runs on every compiler call.

The light modules of the wrapper (this one, ``log``, ``main``, ``local``,
``sockets``) use the built-in ``posix`` module, not ``os``: importing ``os``
(``_collections_abc``, ``stat``, ``posixpath``) costs about as much as all of
our own light modules together, on every compiler call.
"""

import posix
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Final

__all__ = ["SAFEGUARD_VARIABLE", "ClientEnv", "atoi", "process_environ", "truthy"]

#: The recursion guard (reference §8.3): a digit, incremented before starting a compiler.
SAFEGUARD_VARIABLE: "Final" = "_ICECC_SAFEGUARD"

#: ``ICECC_DEBUG`` levels, as 1.4's ``setup_debug`` orders them.
ERROR, WARNING, INFO, DEBUG = 0, 1, 2, 3


def process_environ() -> "Mapping[str, str]":
    """Return the process environment as ``os.environ`` has it, without importing ``os``.

    Once anything imported ``os`` (a test, the remote path), ``os.environ`` is
    the truth: it sees ``putenv`` since the start.  Before that nobody changed
    the environment, and ``posix.environ``, the start-up snapshot, decoded as
    ``os`` decodes it, is the same.
    """
    os_module = sys.modules.get("os")
    if os_module is not None:
        environ: Mapping[str, str] = os_module.environ
        return environ
    encoding, errors = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()
    return {
        key.decode(encoding, errors): value.decode(encoding, errors)
        for key, value in posix.environ.items()
    }


def atoi(text: str | None) -> int:
    """C ``atoi``: optional blanks and sign, then leading digits; 0 when there are none."""
    if not text:
        return 0
    body = text.lstrip(" \t\n\r\f\v")
    sign = -1 if body[:1] == "-" else 1
    if body[:1] in "+-":
        body = body[1:]
    digits = ""
    for char in body:
        if not "0" <= char <= "9":
            break
        digits += char
    return sign * int(digits) if digits else 0


def _strtol_whole(text: str) -> int | None:
    """C ``strtol(text, &end, 0)`` that must consume everything; None if it does not."""
    body = text.lstrip(" \t\n\r\f\v")
    sign = -1 if body[:1] == "-" else 1
    if body[:1] in "+-":
        body = body[1:]
    base, digits = 10, body
    if body[:2].lower() == "0x":
        base, digits = 16, body[2:]
    elif body[:1] == "0" and len(body) > 1:
        base, digits = 8, body[1:]
    allowed = "0123456789abcdef"[:base]
    if not digits or any(c not in allowed for c in digits.lower()):
        return None
    return sign * int(digits, base)


def truthy(value: str | None) -> bool | None:
    """1.4's reading of ``ICECC_REMOTE_CPP``-style switches: None if unset.

    Set means true unless empty or starting with ``0`` (``"0"``, ``"00"``, ``"0x"``).
    """
    if value is None:
        return None
    return value != "" and not value.startswith("0")


class ClientEnv:
    """The variables the wrapper honours, parsed; immutable once built.

    Build it with :meth:`current` (the process environment) or
    :meth:`from_mapping` (tests).  ``None`` always means "not set", which
    1.4 distinguishes from "set to the empty string" for several variables.
    """

    __slots__ = (
        "caret_workaround",
        "cc",
        "clang_remote_cpp",
        "color_diagnostics",
        "compression_level",
        "cxx",
        "debug_level",
        "emacs",
        "env_compression",
        "environ",
        "extrafiles",
        "fallback",
        "gcc_colors",
        "home",
        "icecc",
        "ignore_unverified",
        "logfile",
        "path",
        "preferred_host",
        "race",
        "remote_cpp",
        "repeat_rate",
        "safeguard_level",
        "server_wait",
        "slow_network",
        "term",
        "test_remotebuild",
        "test_socket",
        "verify",
        "version",
    )

    icecc: str
    version: str | None
    debug_level: int
    logfile: str | None
    repeat_rate: int
    preferred_host: str
    cc: str | None
    cxx: str | None
    remote_cpp: bool | None
    clang_remote_cpp: bool | None
    ignore_unverified: bool
    extrafiles: str | None
    color_diagnostics: str | None
    caret_workaround: str | None
    compression_level: int | None
    env_compression: str | None
    slow_network: bool
    server_wait: float
    test_socket: str | None
    test_remotebuild: bool
    safeguard_level: int
    term: str | None
    emacs: bool
    gcc_colors: str | None
    home: str | None
    path: str
    fallback: str
    verify: int
    race: bool
    environ: "Mapping[str, str]"

    @classmethod
    def current(cls) -> "ClientEnv":
        """Snapshot the process environment."""
        return cls.from_mapping(process_environ())

    @classmethod
    def from_mapping(cls, environ: "Mapping[str, str]") -> "ClientEnv":
        """Parse *environ* as 1.4's client does (``main.cpp``, ``local.cpp``, ``util.cpp``)."""
        get = environ.get
        values: dict[str, object] = {
            # ICECC=no / ICECC=disable, compared case-insensitively; anything else is ignored.
            "icecc": (get("ICECC") or "").lower(),
            "version": get("ICECC_VERSION"),
            "debug_level": _debug_level(get("ICECC_DEBUG")),
            "logfile": get("ICECC_LOGFILE"),
            "repeat_rate": atoi(get("ICECC_REPEAT_RATE")),
            "preferred_host": get("ICECC_PREFERRED_HOST") or "",
            "cc": get("ICECC_CC"),
            "cxx": get("ICECC_CXX"),
            "remote_cpp": truthy(get("ICECC_REMOTE_CPP")),
            "clang_remote_cpp": truthy(get("ICECC_CLANG_REMOTE_CPP")),
            "ignore_unverified": get("ICECC_IGNORE_UNVERIFIED") is not None,
            "extrafiles": get("ICECC_EXTRAFILES"),
            "color_diagnostics": get("ICECC_COLOR_DIAGNOSTICS"),
            "caret_workaround": get("ICECC_CARET_WORKAROUND"),
            "compression_level": _compression_level(get("ICECC_COMPRESSION")),
            "env_compression": get("ICECC_ENV_COMPRESSION"),
            "slow_network": (get("ICECC_SLOW_NETWORK") or "")[:1] == "1",
            "server_wait": _server_wait(get("ICECC_SERVER_WAIT")),
            "test_socket": get("ICECC_TEST_SOCKET"),
            "test_remotebuild": get("ICECC_TEST_REMOTEBUILD") is not None,
            "safeguard_level": _safeguard_level(get(SAFEGUARD_VARIABLE)),
            "term": get("TERM"),
            "emacs": get("EMACS") is not None,
            "gcc_colors": get("GCC_COLORS"),
            "home": get("HOME"),
            "path": get("PATH") or "",
            # iceserv's own (icecc(1)): what a cluster failure does, every Nth remote job
            # checked against a local build, local and remote builds racing.
            "fallback": _fallback(get("ICECC_FALLBACK")),
            "verify": max(0, atoi(get("ICECC_VERIFY"))),
            "race": truthy(get("ICECC_RACE")) is True,
            "environ": dict(environ),
        }
        env = object.__new__(cls)
        for name, value in values.items():
            object.__setattr__(env, name, value)
        return env

    def __setattr__(self, name: str, value: object) -> None:
        """Refuse: the snapshot is immutable."""
        msg = f"ClientEnv is immutable (tried to set {name})"
        raise AttributeError(msg)

    def __delattr__(self, name: str) -> None:
        """Refuse: the snapshot is immutable."""
        msg = f"ClientEnv is immutable (tried to delete {name})"
        raise AttributeError(msg)

    def __repr__(self) -> str:
        """Show the parsed values (not the whole environment)."""
        shown = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__ if n != "environ")
        return f"ClientEnv({shown})"

    @property
    def disabled(self) -> bool:
        """``ICECC=disable``: build locally without contacting any daemon."""
        return self.icecc == "disable"

    @property
    def fail_on_cluster_errors(self) -> bool:
        """``ICECC_FALLBACK=fail``: a cluster failure is a compile failure, not a local build."""
        return self.fallback == FALLBACK_FAIL

    @property
    def local_only(self) -> bool:
        """``ICECC=no``: build locally, but in a slot of the local daemon."""
        return self.icecc == "no"

    def child_environ(self, step: int) -> dict[str, str]:
        """Return the environment for a program we start, the guard raised by *step* (§8.3).

        1.4 writes the level as one character (``level + step + '0'``); so do we.
        """
        child = dict(self.environ)
        child[SAFEGUARD_VARIABLE] = chr(self.safeguard_level + step + ord("0"))
        return child


#: ``ICECC_FALLBACK`` values; anything else (or unset) is "local", 1.4's behaviour.
FALLBACK_LOCAL, FALLBACK_FAIL = "local", "fail"


def _fallback(value: str | None) -> str:
    return FALLBACK_FAIL if (value or "").strip().lower() == FALLBACK_FAIL else FALLBACK_LOCAL


def _debug_level(value: str | None) -> int:
    if value is None:
        return ERROR
    lowered = value.lower()
    if lowered == "info":
        return INFO
    if lowered in ("warning", "warnings"):
        return WARNING
    return DEBUG  # any other value, even "error" (reference §8.6)


#: Seconds the client waits for the daemon to name a compile server (not in 1.4, which
#: waits 240 s, an hour for niced jobs): then it compiles locally (issue 13).
DEFAULT_SERVER_WAIT: "Final" = 10.0


def _server_wait(value: str | None) -> float:
    # ICECC_SERVER_WAIT: seconds (a decimal number > 0); unset or not that -> the default.
    try:
        seconds = float(value or "")
    except ValueError:
        return DEFAULT_SERVER_WAIT
    return seconds if 0 < seconds < float("inf") else DEFAULT_SERVER_WAIT


def _compression_level(value: str | None) -> int | None:
    # comm.cpp zstd_compression(): unset, empty or not a whole number -> the default.
    if not value:
        return None
    return _strtol_whole(value)


def _safeguard_level(value: str | None) -> int:
    # safeguard.cpp: set but not a positive number counts as level 1.
    if value is None:
        return 0
    return atoi(value) or 1
