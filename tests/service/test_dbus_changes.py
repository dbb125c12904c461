"""Coalesced PropertiesChanged: at most one emission per interval, only changed values."""

from __future__ import annotations

import asyncio

from iceserv.service.dbus import ChangeCoalescer


class Values:
    """Property values the test changes, and what was emitted."""

    def __init__(self) -> None:
        self.current = {"HostCount": 0, "JobsQueued": 0}
        self.emitted: list[dict[str, int]] = []

    def snapshot(self) -> dict[str, int]:
        return dict(self.current)

    def emit(self, changed: dict[str, int]) -> None:
        self.emitted.append(changed)


def run(scenario):
    return asyncio.run(asyncio.wait_for(scenario(), 10))


async def until(predicate) -> None:
    """Let the loop run until *predicate* holds (the 10 s bound of ``run`` applies)."""
    while not predicate():  # noqa: ASYNC110 - waits for the coalescer's timer to fire
        await asyncio.sleep(0.005)


class TestChangeCoalescer:
    def test_only_changed_values_are_emitted(self):
        """A poke after a change emits just the property that changed."""
        values = Values()

        async def scenario():
            changes = ChangeCoalescer(values.snapshot, values.emit, interval=0.05)
            values.current["HostCount"] = 2
            changes.poke()
            await until(lambda: changes._pending is None)  # the snapshot was taken

        run(scenario)
        assert values.emitted == [{"HostCount": 2}]

    def test_many_pokes_in_one_turn_are_one_signal_with_the_last_value(self):
        """A burst of changes and pokes gives one emission carrying the final value."""
        values = Values()

        async def scenario():
            changes = ChangeCoalescer(values.snapshot, values.emit, interval=0.05)
            for count in range(1, 101):
                values.current["JobsQueued"] = count
                changes.poke()
            await until(lambda: changes._pending is None)

        run(scenario)
        assert values.emitted == [{"JobsQueued": 100}]

    def test_rate_limited_to_one_emission_per_interval(self):
        """Changes right after an emission wait for the interval, then go out together."""
        values = Values()
        times: list[float] = []

        async def scenario():
            loop = asyncio.get_running_loop()
            changes = ChangeCoalescer(values.snapshot,
                                      lambda c: (times.append(loop.time()), values.emit(c)),
                                      interval=0.2)  # fmt: skip
            values.current["HostCount"] = 1
            changes.poke()
            await until(lambda: len(values.emitted) == 1)
            for count in range(2, 6):  # right after the emission: they wait for the interval
                values.current["HostCount"] = count
                changes.poke()
                await asyncio.sleep(0)  # a loop turn each: no flush is due yet
            await until(lambda: len(values.emitted) == 2)

        run(scenario)
        assert values.emitted == [{"HostCount": 1}, {"HostCount": 5}]
        assert times[1] - times[0] >= 0.19

    def test_no_change_no_signal_and_close_drops_pending(self):
        """A poke without a change emits nothing; close() cancels a pending snapshot."""
        values = Values()

        async def scenario():
            changes = ChangeCoalescer(values.snapshot, values.emit, interval=0.05)
            changes.poke()
            await until(lambda: changes._pending is None)  # the snapshot found no change
            values.current["HostCount"] = 1
            changes.poke()
            changes.close()
            assert changes._pending is None  # nothing is left to fire

        run(scenario)
        assert values.emitted == []
