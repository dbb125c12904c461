"""Tests for iceserv.config.confd: the POSIX-sh assignment subset of conf.d files."""

import shutil
import string
import subprocess
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iceserv.config.confd import (
    MAX_ERRORS,
    MAX_FILE,
    ConfdValue,
    parse_confd,
    read_confd,
    read_confd_files,
)
from iceserv.errors import ConfigError

# services.md §2.4, one file holding these lines in this order (I and R use A, B, C).
REFERENCE_FILE = (
    """\
A="double quoted # not a comment"
B='single $HOME \\n literal'
C=unquoted # trailing comment
D=foo#bar
E="esc \\" \\$ \\\\ \\` \\n kept"
F=con\\
tinued
G="multi
line"
export H="exported"
I=${A}-$B
K=${UNSET:-/var/cache/icecream}
L="a"'b'c
"""
    "M=   \n"  # blanks only: kept out of the literal so editors keep them
    """O="x" P="y"
Q=a\\ b
R="${C}"
W=*.c
DUP=1
DUP=2
ICECCD_MAX_PROCESSES=""
"""
)

REFERENCE_VALUES = {
    "A": ("double quoted # not a comment", 1),
    "B": ("single $HOME \\n literal", 2),
    "C": ("unquoted", 3),
    "D": ("foo#bar", 4),
    "E": 'esc " $ \\ ` \\n kept',
    "F": ("continued", 6),
    "G": ("multi\nline", 8),
    "H": ("exported", 10),
    "I": ("double quoted # not a comment-single $HOME \\n literal", 11),
    "K": ("/var/cache/icecream", 12),
    "L": ("abc", 13),
    "M": ("", 14),
    "O": ("x", 15),
    "P": ("y", 15),
    "Q": ("a b", 16),
    "R": ("unquoted", 17),
    "W": ("*.c", 18),
    "DUP": ("2", 20),
    "ICECCD_MAX_PROCESSES": ("", 21),
}


def _parse(text: str, scope: dict[str, ConfdValue] | None = None) -> dict[str, str]:
    return {name: v.value for name, v in parse_confd(text, "f.conf", scope).values.items()}


def _error(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_confd(text, "/etc/conf.d/iceccd")
    return str(info.value)


class TestReferenceCases:
    @pytest.mark.parametrize("name", sorted(REFERENCE_VALUES))
    def test_value_and_line(self, name):
        """Each accepted reference case gets the value dash assigns and the line it starts on."""
        expected = REFERENCE_VALUES[name]
        value, line = expected if isinstance(expected, tuple) else (expected, 5)
        parsed = parse_confd(REFERENCE_FILE, "/etc/conf.d/iceccd").values[name]
        assert (parsed.value, parsed.line, parsed.path) == (value, line, "/etc/conf.d/iceccd")

    def test_only_export_marks_exported(self):
        """Only H, assigned with export, is marked exported."""
        values = parse_confd(REFERENCE_FILE, "f").values
        assert {name for name, v in values.items() if v.exported} == {"H"}

    def test_reference_file_matches_dash(self):
        """dash assigns exactly the reference values when sourcing the same file."""
        assert _dash_values(REFERENCE_FILE, list(REFERENCE_VALUES)) == _parse(REFERENCE_FILE)

    def test_bom_is_stripped(self):
        """A UTF-8 byte order mark at the start of the file is ignored."""
        assert _parse("\ufeffA=1\n") == {"A": "1"}

    def test_crlf_is_stripped_with_a_warning(self):
        """CRLF line endings do not leave a CR in values, and produce one warning."""
        parsed = parse_confd("# x\r\nA=1\r\nB=2\r\n", "f")
        assert {n: v.value for n, v in parsed.values.items()} == {"A": "1", "B": "2"}
        assert [str(w) for w in parsed.warnings] == [
            "f:1: CRLF line endings; the carriage returns were removed"
        ]

    def test_shlex_failures_are_right_here(self):
        """The cases shlex gets wrong (§2.3) come out as sh has them."""
        text = 'F=con\\\ntinued\nE="a \\$ \\` b"\nD=foo#bar\nA=1 B=2\nI=${A}-$B\n'
        assert _parse(text) == {
            "F": "continued",
            "E": "a $ ` b",
            "D": "foo#bar",
            "A": "1",
            "B": "2",
            "I": "1-2",
        }


class TestSubsetDetails:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("A=1;B=2\n", {"A": "1", "B": "2"}),
            ("A=1 ; B=2 ;\n", {"A": "1", "B": "2"}),
            ("A=1;# c\n", {"A": "1"}),
            ("  \tA=1\n\n# only a comment\n", {"A": "1"}),
            ("A=1 B=$A\n", {"A": "1", "B": "1"}),
            ("A=1\nexport A=2 B=$A\n", {"A": "2", "B": "1"}),
            ("A=x\\\n=1\n", {"A": "x=1"}),
            ("A=1 # c \\\nB=2\n", {"A": "1", "B": "2"}),
            ("A=a\\", {"A": "a\\"}),
            ('A=$\nB="cost $ 5 $"\n', {"A": "$", "B": "cost $ 5 $"}),
            ("A='a\\\nb'\n", {"A": "a\\\nb"}),
            ('A="x\\\ny"\n', {"A": "xy"}),
            ('A="a\\zb\\\'c"\n', {"A": "a\\zb\\'c"}),
            ("A=#x\nB=x}{\n", {"A": "#x", "B": "x}{"}),
            ("A=\\~\nB='~'\nC=\"~\"\n", {"A": "~", "B": "~", "C": "~"}),
            ("A=é\n", {"A": "é"}),
            ("export=1\n", {"export": "1"}),
        ],
    )
    def test_accepted_forms(self, text, expected):
        """Separators, comments, escapes and continuations follow POSIX sh."""
        assert _parse(text) == expected

    @pytest.mark.parametrize(
        ("expansion", "expected"),
        [
            ("${E-x}", ""),
            ("${E:-y}", "y"),
            ("${E+z}", "z"),
            ("${E:+w}", ""),
            ("${S-x}", "set"),
            ("${S:-y}", "set"),
            ("${S+z}", "z"),
            ("${S:+w}", "w"),
            ("${U+q}", ""),
            ("${U-r}", "r"),
            ("${U:-}", ""),
            ("${U:-a b}", "a b"),
            ('"${U:-a b}"', "a b"),
            ("$U", ""),
        ],
    )
    def test_parameter_expansion(self, expansion, expected):
        """${V-w}, ${V:-w}, ${V+w} and ${V:+w} distinguish unset, empty (E) and set (S)."""
        assert _parse(f'E=""\nS=set\nX={expansion}\n')["X"] == expected

    def test_references_see_only_earlier_assignments(self):
        """A reference to a variable assigned later in the file expands to nothing."""
        assert _parse("A=$B\nB=1\n") == {"A": "", "B": "1"}

    def test_scope_is_visible_but_not_returned(self):
        """Variables from earlier files can be referenced and are not repeated in the result."""
        scope = {"BASE": ConfdValue("BASE", "/srv", "rc.conf", 3)}
        assert _parse("D=$BASE/envs\n", scope) == {"D": "/srv/envs"}

    def test_export_of_earlier_file_variable(self):
        """Exporting a variable from an earlier file returns it, marked exported."""
        scope = {"BASE": ConfdValue("BASE", "/srv", "rc.conf", 3)}
        parsed = parse_confd("export BASE\n", "f", scope).values
        assert parsed == {"BASE": ConfdValue("BASE", "/srv", "rc.conf", 3, exported=True)}

    def test_export_before_assignment(self):
        """'export A' before 'A=1' still exports A; exporting an unset name assigns nothing."""
        parsed = parse_confd("export A\nA=1\nexport U\n", "f").values
        assert parsed == {"A": ConfdValue("A", "1", "f", 2, exported=True)}

    def test_the_environment_is_not_consulted(self, monkeypatch):
        """$HOME and other process variables are unset inside conf.d files."""
        monkeypatch.setenv("ICESERV_TEST_VAR", "leak")
        assert _parse("A=${ICESERV_TEST_VAR:-none}$HOME\n") == {"A": "none"}


class TestRejected:
    @pytest.mark.parametrize(
        ("line", "reason"),
        [
            ("J=\"${UNSET:-'/var/cache/icecream'}\"", "only a literal word"),
            ("X=~/foo", "tilde"),
            ("Z=a:~/bin", "tilde"),
            ("Y=$'a\\tb'", "bash-only $'...'"),
            ('Y=$"a"', 'bash-only $"..."'),
            ("A+=x", "bash-only '+='"),
            ("A=(a b)", "bash-only arrays"),
            ("declare A=1", "bash-only 'declare'"),
            ("local A=1", "bash-only 'local'"),
            ("readonly A=1", "'readonly' is not supported"),
            ("N=$(echo hi)", "command substitution $(...)"),
            ("N=$((1+1))", "command substitution $(...)"),
            ("X=`id`", "backticks"),
            ('X="`id`"', "backticks"),
            ("X=$1", "special parameter $1"),
            ("X=$@", "special parameter $@"),
            ("X=$?", "special parameter $?"),
            ("X=${#A}", "${#NAME}"),
            ("X=${A#p}", "${A#...}"),
            ("X=${A%p}", "${A%...}"),
            ("X=${A:=w}", "${A:=...}"),
            ("X=${A:?}", "${A:?...}"),
            ("X=${1}", "only ${NAME}"),
            ("X=${A", "${A"),
            ("X=${A:-w", "unterminated ${...}"),
            ("X=${A:-$B}", "only a literal word"),
            ("rm -rf /", "command 'rm'"),
            (". /etc/other", "sourcing another file ('.')"),
            ("source /etc/other", "sourcing another file ('source')"),
            ("if true; then A=1; fi", "command 'if'"),
            ("A=1 cmd", "command 'cmd'"),
            ("FOO =1", "no blanks allowed between 'FOO' and '='"),
            ("X=a && Y=b", "'&' is not allowed"),
            ("X=a | Y=b", "'|' is not allowed"),
            ("X=a >/tmp/f", "'>' is not allowed"),
            ("X=a</tmp/f", "'<' is not allowed"),
            ("(A=1)", "'(' is not allowed"),
            ("A=b)", "')' is not allowed"),
            ("A=1;;", "unexpected ';;'"),
            ("; A=1", "unexpected ';'"),
            ("export", "'export' needs a variable name"),
            ("export -n A", "'export' takes only NAME"),
            ("export A#x", "'export' takes only NAME"),
        ],
    )
    def test_reported_with_its_line(self, line, reason):
        """Anything outside the subset is an error naming the file and the exact line."""
        text = f'GOOD=1\nMULTI="a\nb"\n{line}\nAFTER=1\n'
        message = _error(text)
        assert message.startswith("/etc/conf.d/iceccd:4: ")
        assert reason in message

    def test_error_is_one_line_and_carries_its_source(self):
        """The error is a single line, and its source field is path:line."""
        with pytest.raises(ConfigError) as info:
            parse_confd("A=1\nB=$(id)\n", "/etc/conf.d/iceccd")
        assert "\n" not in str(info.value)
        assert info.value.source == "/etc/conf.d/iceccd:2"
        assert info.value.details == (str(info.value),)

    def test_every_bad_line_is_reported(self):
        """Two bad lines give one error with a line each; parsing went on after the first."""
        with pytest.raises(ConfigError) as info:
            parse_confd("A=1\nB = 2\nC=3\nmkdir /x\nD=$(id)\n", "/etc/conf.d/iceccd")
        assert info.value.details == (
            "/etc/conf.d/iceccd:2: no blanks allowed between 'B' and '='",
            "/etc/conf.d/iceccd:4: command 'mkdir' is not allowed: only NAME=value assignments",
            "/etc/conf.d/iceccd:5: command substitution $(...) is not allowed",
        )
        assert info.value.source == "/etc/conf.d/iceccd:2"

    def test_errors_stop_at_the_limit(self):
        """A file of garbage reports at most MAX_ERRORS lines."""
        with pytest.raises(ConfigError) as info:
            parse_confd("mkdir x\n" * 100, "/etc/conf.d/iceccd")
        assert len(info.value.details) == MAX_ERRORS

    @pytest.mark.parametrize(
        ("text", "line", "reason"),
        [
            ("A=1\nX='never closed\nB=2\n", 2, "unterminated single quote"),
            ('A=1\nX="never closed\nB=2\n', 2, "unterminated double quote"),
            ('A=1\nX="a\\', 2, "unterminated double quote"),
        ],
    )
    def test_unterminated_quotes_point_at_the_opening_line(self, text, line, reason):
        """An unterminated quote is reported at the line where it opened."""
        assert _error(text) == f"/etc/conf.d/iceccd:{line}: {reason}"

    def test_unterminated_quote_after_a_multiline_one(self):
        """A quote left open earlier is pointed out when a later quote runs to the end."""
        message = _error('A=1\nB="lab\nC="4"\nD=2\n')
        assert message == (
            "/etc/conf.d/iceccd:3: unterminated double quote"
            " (the quoted string from line 2 to 3 may lack its closing quote)"
        )

    def test_nul_byte(self):
        """A NUL byte is rejected with its line."""
        assert _error("A=1\nB=\0\n") == "/etc/conf.d/iceccd:2: NUL byte in file"

    def test_invalid_utf8(self, tmp_path):
        """A file that is not UTF-8 is rejected with the line of the first bad byte."""
        path = tmp_path / "iceccd"
        path.write_bytes(b"A=1\nB=\xff\n")
        with pytest.raises(ConfigError, match=rf"^{path}:2: not valid UTF-8$"):
            read_confd(path)


class TestReadFiles:
    def test_later_files_override_and_reference_earlier_ones(self, tmp_path):
        """A set of files behaves like sourcing them in order."""
        (tmp_path / "iceccd").write_text("A=1\nB=base\n")
        (tmp_path / "iceccd.lab").write_text("A=2\nC=$B-lab\n")
        parsed = read_confd_files([tmp_path / "iceccd", tmp_path / "iceccd.lab"])
        assert {n: (v.value, Path(v.path).name) for n, v in parsed.values.items()} == {
            "A": ("2", "iceccd.lab"),
            "B": ("base", "iceccd"),
            "C": ("base-lab", "iceccd.lab"),
        }

    def test_missing_file(self, tmp_path):
        """A file that cannot be read is a one-line error naming it."""
        with pytest.raises(ConfigError, match=r"missing: No such file or directory$"):
            read_confd(tmp_path / "missing")


# -- differential test against dash ------------------------------------------------

DASH = shutil.which("dash")
NAMES = ["A", "B", "C", "D", "E"]
_UNQUOTED = string.ascii_letters + string.digits + "_-./,:@%+=!^]{}#*?[é"
_DQ_LITERAL = "".join(c for c in string.printable if c not in '"\\$`\r\x0b\x0c') + "é"
_SQ_LITERAL = "".join(c for c in string.printable if c not in "'\r\x0b\x0c") + "é"
_WORD = string.ascii_letters + string.digits + "_-./:@ ,%"
_names = st.sampled_from([*NAMES, "U"])
_refs = st.one_of(
    _names.map(lambda n: f"${n}"),
    _names.map(lambda n: f"${{{n}}}"),
    st.builds(
        lambda n, op, w: f"${{{n}{op}{w}}}",
        _names,
        st.sampled_from([":-", "-", ":+", "+"]),
        st.text(_WORD, max_size=4),
    ),
)
_dq_piece = st.one_of(
    st.text(_DQ_LITERAL, min_size=1, max_size=5),
    st.sampled_from(["\\$", "\\`", '\\"', "\\\\", "\\n", "\\a", "\\'", "\\\n", "$ "]),
    _refs,
)
_piece = st.one_of(
    st.text(_UNQUOTED, min_size=1, max_size=5),
    st.sampled_from(list(" \"'\\$`#;&|<>()~*a\t")).map(lambda c: "\\" + c),
    st.just("\\\n"),
    st.text(_SQ_LITERAL, max_size=5).map(lambda s: f"'{s}'"),
    st.lists(_dq_piece, max_size=4).map(lambda p: '"' + "".join(p) + '"'),
    _refs,
)
_value = st.lists(_piece, max_size=4).map("".join)
_assignment = st.builds(lambda n, v: f"{n}={v}", st.sampled_from(NAMES), _value)
_comment = st.text(string.ascii_letters + " #'\"$\\;", max_size=8).map(lambda s: f"#{s}")
_command = st.one_of(
    st.lists(_assignment, min_size=1, max_size=3).map(" ".join),
    st.lists(st.one_of(_assignment, st.sampled_from(NAMES)), min_size=1, max_size=3).map(
        lambda args: "export " + " ".join(args)
    ),
)
_line = st.builds(
    # A lone ';' is a syntax error in sh too: separators only follow commands.
    lambda indent, cmd, sep, comment: f"{indent}{cmd}{sep if cmd else ''}{comment}",
    st.sampled_from(["", " ", "\t"]),
    st.one_of(st.just(""), _command),
    st.sampled_from(["", ";", " ; ", " "]),
    st.one_of(st.just(""), _comment.map(lambda c: " " + c)),
)


def _dash_values(text: str, names: list[str]) -> dict[str, str]:
    """Source *text* with dash in an empty environment and return the set variables."""
    assert DASH is not None
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "conf"
        path.write_text(text, encoding="utf-8")
        show = " ".join(f'"${{{n}+set}}" "${n}"' for n in names)
        script = f". ./conf && printf '%s\\0' {show}"
        out = subprocess.run(
            ["env", "-i", DASH, "-c", script], cwd=directory, capture_output=True, check=True
        ).stdout.decode()
    fields = out.split("\0")
    return {n: fields[2 * i + 1] for i, n in enumerate(names) if fields[2 * i] == "set"}


def _dash_exported(text: str) -> set[str]:
    assert DASH is not None
    with tempfile.TemporaryDirectory() as directory:
        (Path(directory) / "conf").write_text(text, encoding="utf-8")
        out = subprocess.run(
            ["env", "-i", DASH, "-c", ". ./conf && env -0"],
            cwd=directory,
            capture_output=True,
            check=True,
        ).stdout.decode()
    return {entry.split("=", 1)[0] for entry in out.split("\0") if entry} & set(NAMES)


@pytest.mark.skipif(DASH is None, reason="dash is not installed")
class TestDashDifferential:
    @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(_line, max_size=6).map("\n".join))
    def test_same_values_as_dash(self, text):
        """For generated files of the accepted subset, we assign what dash assigns."""
        parsed = parse_confd(text, "conf").values
        assert {n: v.value for n, v in parsed.items()} == _dash_values(text, NAMES)

    @settings(max_examples=50, deadline=None)
    @given(st.lists(_line, max_size=6).map("\n".join))
    def test_same_exports_as_dash(self, text):
        """Variables we mark exported are exactly those dash puts in the environment."""
        parsed = parse_confd(text, "conf").values
        assert {n for n, v in parsed.items() if v.exported} == _dash_exported(text)


class TestLimits:
    def test_doubling_values_stop_at_the_cap(self):
        """`V=$V$V` repeated cannot grow a value past MAX_VALUE: the line that would is an error."""
        text = "V=xxxxxxxx\n" + "V=$V$V\n" * 20
        with pytest.raises(ConfigError) as caught:
            parse_confd(text, "bomb.conf")
        # 8 * 2**13 = 65536 is allowed; line 15 would make 131072.
        assert str(caught.value).startswith("bomb.conf:15: V would be 131072 characters long")

    def test_huge_file_is_refused(self, tmp_path):
        """A file over MAX_FILE bytes is refused before parsing."""
        path = tmp_path / "huge"
        path.write_bytes(b"# " + b"x" * MAX_FILE + b"\n")
        with pytest.raises(ConfigError, match="larger than"):
            read_confd(path)
