"""The names each setting goes by (reference cross-walk): primary, deprecated, the other's."""

from __future__ import annotations

from iceserv.config.crosswalk import Service, names_for
from iceserv.config.models import DaemonSettings, SchedulerSettings


class TestDaemonNames:
    def setup_method(self):
        self.names = names_for(Service.DAEMON)

    def test_primary_names(self):
        """Every daemon setting has the primary name ICECCD_<FIELD>."""
        primary = self.names.primary_names()
        assert primary["ICECCD_MAX_PROCESSES"] == "max_processes"
        assert set(primary.values()) == set(DaemonSettings.model_fields)
        assert self.names.toml_table == "daemon"

    def test_aliases(self):
        """SUSE and Debian names are aliases; only *_MAX_JOBS carry the 0 -> -m 1 rule."""
        alias = self.names.aliases["ICECC_SCHEDULER_HOST"]
        assert (alias.field, alias.family) == ("scheduler_host", "Debian")
        assert {n for n, a in self.names.aliases.items() if a.max_jobs} == {
            "ICECREAM_MAX_JOBS",
            "ICECC_MAX_JOBS",
        }

    def test_environment_and_unsupported(self):
        """ICECC_SCHEDULER is read from the environment; USE_SCHEDULER is its deprecated twin."""
        assert self.names.environment["ICECC_SCHEDULER"] == ("scheduler_host", False)
        assert self.names.environment["USE_SCHEDULER"] == ("scheduler_host", True)
        assert "ICECREAM_RUN_SCHEDULER" in self.names.unsupported

    def test_foreign_names_are_the_schedulers(self):
        """The scheduler's own names are foreign to the daemon, shared names are not."""
        assert "ICECC_SCHEDULER_PORT" in self.names.foreign
        assert "ICECREAM_SCHEDULER_LOG_FILE" in self.names.foreign
        assert "ICECREAM_NETNAME" not in self.names.foreign


class TestSchedulerNames:
    def test_names(self):
        """The scheduler's names: ICECC_SCHEDULER_<FIELD>, its aliases, the daemon's as foreign."""
        names = names_for(Service.SCHEDULER)
        assert set(names.primary_names().values()) == set(SchedulerSettings.model_fields)
        assert names.aliases["ICECREAM_SCHEDULER_LOG_FILE"].field == "log_file"
        assert {"ICECCD_MAX_PROCESSES", "ICECREAM_RUN_SCHEDULER"} <= names.foreign
        assert "ICECREAM_NETNAME" not in names.foreign
        assert names.prog == "icecc-scheduler"
