"""The names each setting goes by: conf.d and environment variables, TOML tables.

Owns the reference's cross-walk as data: the bombo82 (Gentoo overlay) names
are primary (``ICECCD_<FIELD>``, ``ICECC_SCHEDULER_<FIELD>``); the SUSE and
Gentoo-main ``ICECREAM_*`` and Debian ``ICECC_*`` names are deprecated
aliases, mapped per service (in Debian's ``icecc.conf`` ``ICECC_SCHEDULER_HOST``
belongs to the daemon).  It also lists the names that belong to the other
service, so a shared file (Debian, SUSE) does not cause "unknown variable"
warnings.  It must not parse or validate values.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final

from iceserv.config.models import DaemonSettings, SchedulerSettings

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

__all__ = ["DEFAULT_RC_CONF", "DEFAULT_TOML", "Alias", "Service", "ServiceNames", "names_for"]

DEFAULT_TOML: Final = Path("/etc/iceserv/iceserv.toml")
# OpenRC sources these before conf.d; we read them only for $VAR references.
DEFAULT_RC_CONF: Final = (Path("/etc/rc.conf"), Path("/etc/rc.conf.d"))
_SUSE: Final = "SUSE/Gentoo-main"
_DEBIAN: Final = "Debian"


class Service(enum.StrEnum):
    """The two configurable programs; the value is the TOML table name."""

    DAEMON = "daemon"
    SCHEDULER = "scheduler"


@dataclass(frozen=True, slots=True)
class Alias:
    """A deprecated conf.d name for a setting.

    ``max_jobs`` marks the ``*_MAX_JOBS`` names whose init scripts turned
    ``0`` into ``-m 1 --no-remote``; the rule applies to these names only.
    """

    name: str
    field: str
    family: str
    max_jobs: bool = False


@dataclass(frozen=True, slots=True)
class ServiceNames:
    """Every name one service's settings are known by."""

    service: Service
    prog: str
    prefix: str
    default_confd: Path
    settings_cls: type[DaemonSettings | SchedulerSettings]
    aliases: Mapping[str, Alias]
    # Extra environment variables: name -> (field, deprecated).
    environment: Mapping[str, tuple[str, bool]] = field(default_factory=dict)
    # Known names with a warning of their own (e.g. unsupported features).
    unsupported: Mapping[str, str] = field(default_factory=dict)
    # Names of the other service: ignored without a warning.
    foreign: frozenset[str] = frozenset()

    @property
    def toml_table(self) -> str:
        """Return the TOML table holding this service's settings."""
        return self.service.value

    @property
    def fields(self) -> tuple[str, ...]:
        """Return the setting names in declaration order."""
        return tuple(self.settings_cls.model_fields)

    def primary(self, field_name: str) -> str:
        """Return the primary conf.d (and environment) name of *field_name*."""
        return self.prefix + field_name.upper()

    def primary_names(self) -> dict[str, str]:
        """Return ``{primary name: field}`` for every setting."""
        return {self.primary(name): name for name in self.fields}


def _aliases(*aliases: Alias) -> dict[str, Alias]:
    return {alias.name: alias for alias in aliases}


_DAEMON_ALIASES: Final = _aliases(
    Alias("ICECREAM_NICE_LEVEL", "nice_level", _SUSE),
    Alias("ICECC_NICE_LEVEL", "nice_level", _DEBIAN),
    Alias("ICECREAM_LOG_FILE", "log_file", _SUSE),
    Alias("ICECC_LOG_FILE", "log_file", _DEBIAN),
    Alias("ICECREAM_NETNAME", "net_name", _SUSE),
    Alias("ICECC_NETNAME", "net_name", _DEBIAN),
    Alias("ICECREAM_SCHEDULER_HOST", "scheduler_host", _SUSE),
    Alias("ICECC_SCHEDULER_HOST", "scheduler_host", _DEBIAN),
    Alias("ICECREAM_MAX_JOBS", "max_processes", _SUSE, max_jobs=True),
    Alias("ICECC_MAX_JOBS", "max_processes", _DEBIAN, max_jobs=True),
    Alias("ICECREAM_ALLOW_REMOTE", "allow_remote", _SUSE),
    Alias("ICECC_ALLOW_REMOTE", "allow_remote", _DEBIAN),
    Alias("ICECREAM_BASEDIR", "env_basedir", _SUSE),
    Alias("ICECC_BASEDIR", "env_basedir", _DEBIAN),
    Alias("ICECC_CACHE_LIMIT", "cache_limit", _DEBIAN),
    Alias("ICECREAM_VERBOSITY", "verbosity", _SUSE),
)

_SCHEDULER_ALIASES: Final = _aliases(
    Alias("ICECREAM_NETNAME", "net_name", _SUSE),
    Alias("ICECC_NETNAME", "net_name", _DEBIAN),
    Alias("ICECREAM_VERBOSITY", "verbosity", _SUSE),
    Alias("ICECREAM_SCHEDULER_LOG_FILE", "log_file", _SUSE),
    # Debian's ICECC_SCHEDULER_LOG_FILE is already the primary name.
)

#: Environment variables both services read (issue 14: one key for the whole cluster).
_SHARED_ENVIRONMENT: Final = {
    "ICECC_NETWORK_KEY_FILE": ("key_file", False),
    "ICECC_PREVIOUS_NETWORK_KEY_FILE": ("previous_key_file", False),
    "ICECC_AUTH": ("auth", False),
    "ICECC_ENCRYPT": ("encrypt", False),
}

_DAEMON_PREFIX: Final = "ICECCD_"
_SCHEDULER_PREFIX: Final = "ICECC_SCHEDULER_"


def _all_names(prefix: str, fields: Iterable[str], aliases: Mapping[str, Alias]) -> frozenset[str]:
    return frozenset(prefix + name.upper() for name in fields) | frozenset(aliases)


def names_for(service: Service) -> ServiceNames:
    """Return the names of *service*'s settings."""
    daemon_names = _all_names(_DAEMON_PREFIX, DaemonSettings.model_fields, _DAEMON_ALIASES)
    scheduler_names = _all_names(
        _SCHEDULER_PREFIX, SchedulerSettings.model_fields, _SCHEDULER_ALIASES
    )
    if service is Service.DAEMON:
        return ServiceNames(
            service=service,
            prog="iceccd",
            prefix=_DAEMON_PREFIX,
            default_confd=Path("/etc/conf.d/iceccd"),
            settings_cls=DaemonSettings,
            aliases=_DAEMON_ALIASES,
            # Read by 1.4's scheduler discovery (services/comm.cpp) when -s is not given.
            environment={
                "ICECC_SCHEDULER": ("scheduler_host", False),
                "USE_SCHEDULER": ("scheduler_host", True),
                **_SHARED_ENVIRONMENT,
            },
            unsupported={
                "ICECREAM_RUN_SCHEDULER": "iceserv runs the scheduler as its own service; "
                "enable icecc-scheduler instead",
            },
            foreign=scheduler_names - daemon_names,
        )
    return ServiceNames(
        service=service,
        prog="icecc-scheduler",
        prefix=_SCHEDULER_PREFIX,
        default_confd=Path("/etc/conf.d/icecc-scheduler"),
        settings_cls=SchedulerSettings,
        aliases=_SCHEDULER_ALIASES,
        environment=_SHARED_ENVIRONMENT,
        foreign=(daemon_names | {"ICECREAM_RUN_SCHEDULER"}) - scheduler_names,
    )
