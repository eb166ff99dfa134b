"""The thread count that follows the load (kd.training.threads): its rule on hand cases, the hooks
on a scripted machine (fake clocks and CPU counters), and /proc/stat's busy time by hand."""
from __future__ import annotations

import os

import pytest

from kd.training.threads import LoadFollowingThreads, chosen_threads, machine_busy_seconds


@pytest.mark.parametrize("others, cores, ceiling, current, expected", [
    (0.0, 2, 2, 1, 2),  # an idle machine: both cores
    (0.2, 2, 2, 1, 2),  # a flicker below a quarter core frees it
    (0.4, 2, 2, 1, 1),  # between a quarter and a half: not free enough to raise ...
    (0.4, 2, 2, 2, 2),  # ... nor taken enough to lower
    (0.6, 2, 2, 2, 1),  # more than half a core taken: one thread
    (1.0, 2, 2, 2, 1),  # one busy process
    (2.0, 2, 2, 2, 1),  # two: never below one thread
    (0.0, 16, 8, 1, 8),  # the ceiling holds on an idle big machine
    (9.3, 16, 8, 8, 7),  # 9.3 cores taken: ceil(9.3 - 0.5) = 9 of 16, 7 left
    (3.0, 16, 8, 8, 8),  # 3 of 16 taken: 13 free, still the ceiling
    (0.0, 1, 1, 1, 1),
])
def test_chosen_threads_by_hand(others, cores, ceiling, current, expected):
    assert chosen_threads(others, cores, ceiling, current) == expected


class ScriptedMachine:
    """A clock, the machine's busy CPU seconds and this process's, advanced by the test."""

    def __init__(self) -> None:
        self.now, self.busy, self.own = 0.0, 0.0, 0.0
        self.set_calls: list[int] = []

    def advance(self, seconds: float, own_cores: float, other_cores: float) -> None:
        self.now += seconds
        self.own += seconds * own_cores
        self.busy += seconds * (own_cores + other_cores)

    def hooks(self, ceiling: int = 2, cores: int = 2) -> LoadFollowingThreads:
        return LoadFollowingThreads(ceiling, cores, interval=1.0, machine_busy=lambda: self.busy,
                                    own_cpu=lambda: self.own, clock=lambda: self.now,
                                    set_threads=self.set_calls.append)


def test_the_count_follows_other_processes():
    machine = ScriptedMachine()
    hooks = machine.hooks()
    assert machine.set_calls == [1], "one thread until the load is known"
    machine.advance(0.5, own_cores=1.0, other_cores=0.0)
    hooks.on_batch(1, 10, {})
    assert machine.set_calls == [1], "not before a whole interval"
    machine.advance(0.6, own_cores=1.0, other_cores=0.0)
    hooks.on_batch(1, 10, {})
    assert machine.set_calls == [1, 2], "an idle machine: both cores"
    machine.advance(1.25, own_cores=2.0, other_cores=0.0)  # its own two threads are not another's load
    hooks.on_batch(1, 10, {})
    assert machine.set_calls == [1, 2]
    machine.advance(1.25, own_cores=1.2, other_cores=0.8)  # a busy process shares the machine
    hooks.on_batch(1, 10, {})
    assert machine.set_calls == [1, 2, 1]
    machine.advance(1.25, own_cores=1.0, other_cores=1.0)
    hooks.on_batch(2, 10, {})
    machine.advance(1.25, own_cores=1.0, other_cores=0.0)  # it finished
    hooks.on_batch(2, 10, {})
    assert machine.set_calls == [1, 2, 1, 2] and hooks.threads == 2


def test_without_proc_stat_the_count_stays_one():
    calls: list[int] = []
    hooks = LoadFollowingThreads(2, 2, machine_busy=lambda: None, set_threads=calls.append)
    hooks.on_batch(1, 10, {})
    assert calls == [1] and hooks.threads == 1


def test_machine_busy_seconds_from_a_proc_stat_line(tmp_path):
    stat = tmp_path / "stat"
    # user nice system idle iowait irq softirq steal guest guest_nice
    stat.write_text("cpu  100 20 30 5000 70 4 6 8 0 0\ncpu0 50 10 15 2500 35 2 3 4 0 0\n")
    assert machine_busy_seconds(stat) == pytest.approx((100 + 20 + 30 + 4 + 6 + 8) / os.sysconf("SC_CLK_TCK"))
    assert machine_busy_seconds(tmp_path / "absent") is None
    (tmp_path / "odd").write_text("intr 1 2 3\n")
    assert machine_busy_seconds(tmp_path / "odd") is None
