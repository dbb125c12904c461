"""Where a configuration value came from, as error messages and `iceserv config` print it."""

from __future__ import annotations

import pytest

from iceserv.config.origin import ConfigWarning, Origin, OriginKind


class TestOrigin:
    @pytest.mark.parametrize(
        ("origin", "text"),
        [
            (
                Origin(OriginKind.CONFD, "ICECCD_NICE_LEVEL", "/etc/conf.d/iceccd", 3),
                "/etc/conf.d/iceccd:3: ICECCD_NICE_LEVEL",
            ),
            (
                Origin(OriginKind.TOML, "nice", "/etc/iceserv.toml", 7, "daemon"),
                "/etc/iceserv.toml:7: [daemon] nice",
            ),
            (
                Origin(OriginKind.TOML, "nice", "/etc/iceserv.toml", 0, "daemon"),
                "/etc/iceserv.toml: [daemon] nice",
            ),
            (Origin(OriginKind.FLAG, "-m"), "flag -m"),
            (Origin(OriginKind.ENV, "ICECCD_MAX_PROCESSES"), "env ICECCD_MAX_PROCESSES"),
            (Origin(OriginKind.DEFAULT), "default"),
        ],
    )
    def test_str(self, origin, text):
        """Each kind prints as `location: name` (files) or `kind name`; defaults as `default`."""
        assert str(origin) == text

    def test_describe(self):
        """describe() adds the raw value, for error messages about it."""
        origin = Origin(OriginKind.CONFD, "ICECCD_NICE_LEVEL", "/etc/conf.d/iceccd", 3)
        assert origin.describe("x") == "/etc/conf.d/iceccd:3: ICECCD_NICE_LEVEL='x'"
        assert Origin(OriginKind.FLAG, "-m").describe(4) == "flag -m=4"
        assert Origin(OriginKind.DEFAULT).describe(4) == "default 4"


class TestConfigWarning:
    def test_str(self):
        """A warning is `where: message`, or only the message without a place."""
        assert str(ConfigWarning("env X", "unknown")) == "env X: unknown"
        assert str(ConfigWarning("", "unknown")) == "unknown"
