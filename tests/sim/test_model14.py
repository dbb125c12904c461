"""Tests of iceserv.sim.model14: 1.4's placement rules and quirks, independent of iceserv."""

from __future__ import annotations

import struct

from sim.helpers import ENV, job

from iceserv.sim import HostSpec
from iceserv.sim.model14 import Model14Placement, _f32, _Job, _speed, _Stat


def rated(model: Model14Placement, name: str, *, output: int, user: int) -> None:
    """Give host *name* seven statistics of the given speed (internals, as 1.4 keeps them)."""
    server = model._find(name)
    for i in range(7):
        server.compiled.append(_Stat(i + 1, output, user))
    server.cum_output, server.cum_user = 7 * output, 7 * user
    model._all_stats = 7


def cluster() -> Model14Placement:
    model = Model14Placement(seed=1)
    for host in (HostSpec("slow", 1.0, 4, envs=(ENV,)), HostSpec("fast", 2.0, 4, envs=(ENV,)),
                 HostSpec("laptop", 1.0, 0)):  # fmt: skip
        model.login(host, host.envs, 0.0)
        model.stats(host.name, 0, 0.0)
    rated(model, "slow", output=1000, user=1000)
    rated(model, "fast", output=2000, user=1000)
    return model


class TestPickServer:
    def test_fastest_rated_host(self):
        """With fresh ratings the faster host is picked, as in 1.4."""
        model = cluster()
        model._find("slow").last_picked = model._find("fast").last_picked = 9
        assert model._pick_server(_Job(20, model._find("laptop"), 1, ENV, 0)).name == "fast"

    def test_unsigned_wrap_picks_for_exploration(self):
        """A job older than a host's last pick wraps 1.4's unsigned subtraction: host taken at once.

        The slow host comes first in login order and last took job 9; job 5
        (queued earlier, say behind another submitter) gets it, speed or not.
        """
        model = cluster()
        model._find("slow").last_picked = model._find("fast").last_picked = 9
        assert model._pick_server(_Job(5, model._find("laptop"), 1, ENV, 0)).name == "slow"

    def test_new_host_without_env_loses_to_installed(self):
        """A never-used host without the environment is only "best uninstalled"."""
        model = cluster()
        model._find("slow").last_picked = model._find("fast").last_picked = 9
        model.login(HostSpec("new", 4.0, 4), (), 0.0)
        model.stats("new", 0, 0.0)
        assert model._pick_server(_Job(20, model._find("laptop"), 1, ENV, 0)).name == "fast"


class TestMessages:
    def test_stats_resets_client_count(self):
        """STATS carries no client count; 1.4 sets it to 0 all the same."""
        model = cluster()
        model.get_cs("laptop", 1, job(0, 1.0), 7, 0.0)
        assert model._find("laptop").client_count == 7
        model.stats("laptop", 0, 1.0)
        assert model._find("laptop").client_count == 0

    def test_nobody_could_ever_take_it(self):
        """With no host that has slots, the job goes to its submitter at once."""
        model = Model14Placement(seed=1)
        model.login(HostSpec("laptop", 1.0, 0), (), 0.0)
        (placed,) = model.get_cs("laptop", 1, job(0, 1.0), 1, 0.0)
        assert (placed.server, placed.got_env) == ("laptop", True)

    def test_waits_while_someone_could(self):
        """A fully loaded cluster delays the job rather than giving it to a slotless submitter."""
        model = Model14Placement(seed=1)
        model.login(HostSpec("laptop", 1.0, 0), (), 0.0)
        model.login(HostSpec("a", 1.0, 1), (ENV,), 0.0)  # load 1000 until its STATS
        assert model.get_cs("laptop", 1, job(0, 1.0), 1, 0.0) == []
        (placed,) = model.stats("a", 0, 3.0)
        assert placed.server == "a"


class TestSinglePrecision:
    def test_speed_is_a_c_float(self):
        """Ratings are rounded to C float, as 1.4 computes them."""
        model = cluster()
        model._find("slow").cum_output = 1_000_001
        value = _speed(model._find("slow"))
        assert value == struct.unpack("f", struct.pack("f", value))[0]
        assert _f32(0.1) != 0.1
