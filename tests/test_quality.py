"""Static checks the project promises: ruff, mypy --strict, the import contracts, and no
integer protocol-version comparisons outside ``iceserv/protocol/`` (STYLE.md convention 4)."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

import iceserv
from iceserv.errors import IceservError
from iceserv.protocol import MIN_PROTOCOL_VERSION, PROTOCOL_VERSION

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PACKAGE = ROOT / "iceserv"
#: Names that say a value is a protocol version (``version``, ``peer.protocol``, ``minimal``).
_VERSION_NAME = re.compile(r"version|protocol|minimal", re.IGNORECASE)
#: Files allowed to compare versions as integers for now, each with the reason.  Empty today;
#: an entry is a debt, to be paid by moving the threshold into protocol/features.py.
#: client/slot.py writes the version handshake by hand for the light local-slot path (importing
#: the protocol package costs ~14 ms per compiler call); tests/client/test_slot.py checks its
#: constants and bytes against iceserv.protocol.
KNOWN_VERSION_COMPARISONS: frozenset[str] = frozenset({"iceserv/client/slot.py"})
#: Exception classes not (yet) deriving from IceservError.  Both are in daemon/, which issue 12's
#: daemon core rewrites; it removes these entries.
KNOWN_FOREIGN_ERRORS: frozenset[str] = frozenset()


#: Files the formatter does not own yet: compile.py's command line is being changed on another
#: branch (reproducible -g objects); it is formatted once that lands.
NOT_YET_FORMATTED: tuple[str, ...] = ()
_FMT_MARKER = re.compile(r"#\s*fmt:\s*(skip|off)")

#: Packages whose every module has a test file of its own or a line in tests/README.md.
MIRRORED = ("protocol", "scheduler", "config", "daemon")
_LISTED_MODULE = re.compile(r"^\| `(iceserv/[\w/]+\.py)` \|", re.MULTILINE)

_BUILTIN_ERRORS = (OSError, ValueError, RuntimeError, LookupError, TypeError, TimeoutError)


def _exception_classes() -> dict[str, type[BaseException]]:
    """Every exception class defined in an iceserv module, by qualified name."""
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(iceserv.__path__, "iceserv."):
        if info.name.endswith("__main__"):
            continue  # running it is the program
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == info.name
            ):
                found[f"{info.name}.{name}"] = value
    return found


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / argv[0]), *argv[1:]],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def _is_version_number(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Constant)
        and type(node.value) is int
        and MIN_PROTOCOL_VERSION <= node.value <= PROTOCOL_VERSION
    )


def _names_a_version(node: ast.AST) -> bool:
    for sub in ast.walk(node):
        name = sub.id if isinstance(sub, ast.Name) else getattr(sub, "attr", None)
        if isinstance(name, str) and _VERSION_NAME.search(name):
            return True
    return False


def version_thresholds(source: str) -> list[int]:
    """Return the lines where an integer protocol version is compared, clamped or named.

    A comparison (``peer.protocol >= 31``), a ``max``/``min`` call
    (``max(version, 35)``) or an assignment (``_MIN_PROTOCOL = 21``) counts when
    one operand is an integer in the protocol-version range and another names a
    version.
    """
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("max", "min"):
            operands = list(node.args)
        elif isinstance(node, ast.Assign):
            operands = [*node.targets, node.value]
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            operands = [node.target, node.value]
        else:
            continue
        numbers = [op for op in operands if _is_version_number(op)]
        others = [op for op in operands if not _is_version_number(op)]
        if numbers and any(_names_a_version(op) for op in others):
            lines.append(node.lineno)
    return lines


class TestQuality:
    def test_ruff_is_clean(self):
        """ruff (every rule, ignores commented in pyproject.toml) finds nothing."""
        proc = _run("ruff", "check", "--no-cache", "iceserv", "tests", "testbed", "bench", "fuzz")
        assert proc.returncode == 0, proc.stdout + proc.stderr

    def test_formatter_decides_the_layout(self):
        """`ruff format` leaves the package as it is, and no `fmt: skip`/`fmt: off` overrides it."""
        excluded = [arg for path in NOT_YET_FORMATTED for arg in ("--exclude", path)]
        proc = _run("ruff", "format", "--check", "--no-cache", *excluded, "iceserv")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        markers = [
            f"{path.relative_to(ROOT)}:{number}"
            for path in sorted(PACKAGE.rglob("*.py"))
            if not path.relative_to(ROOT).as_posix().startswith(NOT_YET_FORMATTED)
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
            if _FMT_MARKER.search(line)
        ]
        assert not markers

    def test_mypy_strict_is_clean(self):
        """mypy --strict accepts the whole package."""
        proc = _run("mypy")
        assert proc.returncode == 0, proc.stdout + proc.stderr

    def test_import_contracts_hold(self):
        """import-linter's contracts (protocol is stdlib-only, layers independent) are kept."""
        proc = _run("lint-imports")
        assert proc.returncode == 0, proc.stdout + proc.stderr


class TestErrors:
    def test_every_error_is_an_iceserv_error(self):
        """Each exception class derives from IceservError and from the builtin it is."""
        classes = _exception_classes()
        assert len(classes) > 10  # the walk found the package's errors
        foreign = {
            name
            for name, cls in classes.items()
            if not issubclass(cls, IceservError) and name not in KNOWN_FOREIGN_ERRORS
        }
        assert not foreign
        # The two roots stand for no builtin of their own; their subclasses do.
        roots = {"iceserv.errors.IceservError", "iceserv.errors.ProtocolError"}
        without_builtin = {
            name
            for name, cls in classes.items()
            if name not in roots and not issubclass(cls, _BUILTIN_ERRORS)
        }
        assert not without_builtin

    def test_known_exceptions_still_foreign(self):
        """An entry of the exception list is removed as soon as its class is fixed."""
        classes = _exception_classes()
        fixed = {n for n in KNOWN_FOREIGN_ERRORS if issubclass(classes[n], IceservError)}
        assert not fixed


class TestMirroredTests:
    def test_every_module_has_a_test_file_or_a_reason(self):
        """Each module of protocol/, scheduler/, config/, daemon/ has tests/<pkg>/test_<mod>.py."""
        listed = set(_LISTED_MODULE.findall((ROOT / "tests" / "README.md").read_text()))
        missing, needless = [], []
        for package in MIRRORED:
            for path in sorted((PACKAGE / package).glob("*.py")):
                name = "package" if path.stem == "__init__" else path.stem
                has_test = (ROOT / "tests" / package / f"test_{name}.py").exists()
                relative = path.relative_to(ROOT).as_posix()
                if not has_test and relative not in listed:
                    missing.append(relative)
                if has_test and relative in listed:
                    needless.append(relative)
        assert not missing, "add a test file or a line in tests/README.md"
        assert not needless, "remove these lines from tests/README.md"
        assert all((ROOT / name).exists() for name in listed)


class TestVersionsAreFeatures:
    def test_no_integer_version_comparisons_outside_protocol(self):
        """Outside protocol/, code asks for a Feature instead of comparing version numbers."""
        offenders = []
        for path in sorted(PACKAGE.rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            if relative.startswith("iceserv/protocol/"):
                continue
            lines = version_thresholds(path.read_text(encoding="utf-8"))
            if lines and relative not in KNOWN_VERSION_COMPARISONS:
                offenders += [f"{relative}:{line}" for line in lines]
        assert not offenders, "use protocol.features (supports, min_version): " + ", ".join(
            offenders
        )

    def test_known_exceptions_still_offend(self):
        """An entry of the exception list is removed as soon as its file is clean."""
        clean = [
            name
            for name in KNOWN_VERSION_COMPARISONS
            if not version_thresholds((ROOT / name).read_text(encoding="utf-8"))
        ]
        assert not clean

    @pytest.mark.parametrize(
        ("source", "found"),
        [
            ("if peer.protocol >= 31:\n    pass\n", [1]),
            ("v = max(version, 35)\n", [1]),
            ("_MIN_PROTOCOL: Final = 21\n", [1]),
            ("ok = int(minimal >= 31)\n", [1]),
            ("if 27 > conn.peer_version:\n    pass\n", [1]),
            ("if supports(version, Feature.NO_PINGS):\n    pass\n", []),
            ("if len(data) >= 24:\n    pass\n", []),
            ("version = 7\n", []),
            ("if exitcode == 31:\n    pass\n", []),
        ],
    )
    def test_the_check_sees_thresholds(self, source, found):
        """The checker flags version thresholds in each form and nothing else."""
        assert version_thresholds(source) == found
