"""Bounded fuzzing of the TOML settings layer: any file loads or fails with ConfigError."""

import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iceserv.config import Locations, Service, load_settings, names_for
from iceserv.errors import ConfigError

_NO_FILES = Locations(confd=(), toml=None, rc_conf=())
_FIELDS = sorted({*names_for(Service.DAEMON).fields, *names_for(Service.SCHEDULER).fields})
_VALUES = st.one_of(
    st.integers(-(2**70), 2**70), st.booleans(), st.floats(allow_nan=True), st.text(max_size=20),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=4), st.integers(),
                                                         max_size=2),
)  # fmt: skip
_TABLES = st.dictionaries(
    st.one_of(st.sampled_from(_FIELDS), st.text(max_size=10)), _VALUES, max_size=4
)
_DOCUMENTS = st.dictionaries(
    st.one_of(st.sampled_from(["daemon", "scheduler"]), st.text(max_size=6)),
    st.one_of(_TABLES, _VALUES), max_size=3,
)  # fmt: skip
_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[
    HealthCheck.function_scoped_fixture, HealthCheck.too_slow])  # fmt: skip


def _load_all(path):
    for service in Service:
        error = None
        try:
            load_settings(service, ["--config", str(path)], {}, locations=_NO_FILES)
        except ConfigError as exc:
            error = exc
        if error is not None:
            assert error.details
            assert all(line.startswith(str(path)) for line in error.details), error.details


class TestTomlFuzz:
    @_SETTINGS
    @given(st.text(max_size=200))
    def test_any_text(self, tmp_path, text):
        """Arbitrary text: settings or a ConfigError whose every line names the file."""
        path = tmp_path / "iceserv.toml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        _load_all(path)

    @_SETTINGS
    @given(st.binary(max_size=100))
    def test_any_bytes(self, tmp_path, data):
        """Arbitrary bytes (invalid UTF-8 included) are a ConfigError at worst."""
        path = tmp_path / "iceserv.toml"
        path.write_bytes(data)
        _load_all(path)

    @_SETTINGS
    @given(_DOCUMENTS)
    def test_any_document(self, tmp_path, document):
        """Valid TOML with any tables, keys and value types: settings or a ConfigError."""
        path = tmp_path / "iceserv.toml"
        path.write_text(tomli_w.dumps(document), encoding="utf-8", errors="surrogatepass")
        _load_all(path)
