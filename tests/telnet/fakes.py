"""An in-memory ``SchedulerControl`` for the telnet tests, behaving like 1.4's scheduler.

``FakeControl`` holds hosts, jobs and the block list as plain data and applies
``removecs``/``blockcs``/``unblockcs`` the way 1.4 does (a removed daemon takes
the jobs it serves or submitted with it).  It records the arguments of every
facade call so tests can check what the telnet layer passed on.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class FakeJob:
    """A job view: the attributes ``TelnetJob`` requires."""

    id: int
    state: str
    submitter: str
    server: str = "<unknown>"
    filename: str = "a.c"


@dataclass
class FakeHost:
    """A daemon view; ``jobs_assigned`` counts ``jobs`` plus ``extra_assigned``."""

    nodename: str
    ip: str = "127.0.0.1"
    port: int = 10245
    platform: str = "x86_64"
    speed: float = 0.0
    max_jobs: int = 2
    load: int = 0
    busy_installing_since: int | None = None
    jobs: list[FakeJob] = field(default_factory=list)
    extra_assigned: int = 0

    @property
    def jobs_assigned(self) -> int:
        """Jobs assigned to the host."""
        return len(self.jobs) + self.extra_assigned

    def matches(self, name: str) -> bool:
        """Tell whether *name* is this host's nodename or IP (1.4 ``CompileServer::matches``)."""
        return name in {self.nodename, self.ip}


@dataclass
class FakeControl:
    """The facade over plain data; ``internals_texts`` maps nodename to its STATUS_TEXT."""

    uptime: int = 0
    hosts: list[FakeHost] = field(default_factory=list)
    jobs: list[FakeJob] = field(default_factory=list)
    blocks: list[str] = field(default_factory=list)
    total: int = 0
    internals_texts: dict[str, str] = field(default_factory=dict)
    calls: list[tuple[str, list[str]]] = field(default_factory=list)

    def uptime_seconds(self) -> int:
        return self.uptime

    def host_count(self) -> int:
        return len(self.hosts)

    def job_count(self) -> int:
        return len(self.jobs)

    def total_jobs(self) -> int:
        return self.total

    def list_hosts(self) -> list[FakeHost]:
        return list(self.hosts)

    def list_jobs(self) -> list[FakeJob]:
        return sorted(self.jobs, key=lambda job: job.id)

    def blocked(self) -> list[str]:
        return list(self.blocks)

    def _remove(self, name: str) -> bool:
        host = next((h for h in self.hosts if h.matches(name)), None)
        if host is None:
            return False
        self.hosts.remove(host)
        gone = {host.nodename}
        self.jobs = [j for j in self.jobs if j.server not in gone and j.submitter not in gone]
        for other in self.hosts:
            other.jobs = [j for j in other.jobs if j.submitter not in gone]
        return True

    def remove_hosts(self, names: list[str], /) -> list[str]:
        self.calls.append(("remove_hosts", list(names)))
        return [name for name in names if self._remove(name)]

    def block_hosts(self, names: list[str], /) -> list[str]:
        self.calls.append(("block_hosts", list(names)))
        removed = []
        for name in names:
            self.blocks.append(name)
            if self._remove(name):
                removed.append(name)
        return removed

    def unblock_hosts(self, names: list[str], /) -> None:
        self.calls.append(("unblock_hosts", list(names)))
        for name in names:
            if name in self.blocks:
                self.blocks.remove(name)

    async def internals(self, names: list[str], /) -> list[str]:
        self.calls.append(("internals", list(names)))
        return [
            self.internals_texts.get(host.nodename, f"{host.nodename} not reporting\n")
            for host in self.hosts
            if not names or any(host.matches(name) for name in names)
        ]
