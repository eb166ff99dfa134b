"""A torch thread count that follows the machine's load: kd's default on the command line. Training
takes the cores nobody else uses, up to a ceiling, and drops to one thread as soon as another process
wants a core.

Why (2 cores, one epoch of NCBI-disease's CRF tagger as a whole `kd train`, bench/README.md,
"Threads"): alone, 2 threads whose waits spin took 20.3 s against 27.2 s for one thread and 35.2 s for
2 threads that wait passively; beside a busy process, spinning threads took 1.2-4x one thread's time.
No fixed setting is near the best in both cases; a count that follows the load is.

The load is the CPU time that other processes took over the last interval: the machine's busy time
(/proc/stat) less this process's own (which includes its spinning threads). It is read between
batches, about once a second: torch's count can only be changed from the thread that trains."""
from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from kd.training.loop import TrainingHooks

# Another process's use counts as a core taken once it passes half a core (so a background flicker
# does not take one), and a taken core counts as free again below a quarter of a core (so the
# count does not flap around one value).
TAKEN_ABOVE, FREE_BELOW = 0.5, 0.25


def chosen_threads(others: float, cores: int, ceiling: int, current: int) -> int:
    """The thread count for the next interval, from the cores other processes used in the last one
    (`others`, in cores), the machine's `cores`, kd's `ceiling` and the `current` count."""
    keep_up_to = cores - math.ceil(others - TAKEN_ABOVE)
    if current > keep_up_to:
        return max(1, min(ceiling, keep_up_to))
    raise_to = cores - math.ceil(others - FREE_BELOW)
    return max(1, min(ceiling, max(current, raise_to)))


def machine_busy_seconds(stat: Path = Path("/proc/stat")) -> float | None:
    """CPU seconds every core of the machine spent busy since boot (user, nice, system, irq, softirq
    and steal: another virtual machine's turn is a core taken too), or None where /proc/stat is not."""
    try:
        with open(stat) as handle:
            fields = handle.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu" or len(fields) < 9:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class LoadFollowingThreads(TrainingHooks):
    """Training hooks that set torch's thread count from the load, every `interval` seconds between
    batches: at most `ceiling` threads, one at the start. `machine_busy`, `own_cpu`, `clock` and
    `set_threads` are the machine's busy CPU seconds, this process's CPU seconds, a wall clock and
    what sets the count (tests give their own)."""

    def __init__(self, ceiling: int, cores: int, *, interval: float = 1.0,
                 machine_busy: Callable[[], float | None] = machine_busy_seconds,
                 own_cpu: Callable[[], float] = time.process_time, clock: Callable[[], float] = time.monotonic,
                 set_threads: Callable[[int], None] = torch.set_num_threads) -> None:
        self.ceiling, self.cores, self.interval = ceiling, cores, interval
        self.machine_busy, self.own_cpu, self.clock, self.set_threads = machine_busy, own_cpu, clock, set_threads
        self.threads = 1
        self.set_threads(1)
        self.last = self._sample()

    def _sample(self) -> tuple[float, float, float] | None:
        busy = self.machine_busy()
        return None if busy is None else (self.clock(), busy, self.own_cpu())

    def on_batch(self, epoch: int, tokens: int, terms: Mapping[str, float]) -> None:
        if self.last is None or self.clock() - self.last[0] < self.interval:
            return
        now = self._sample()
        if now is None:
            self.last = None
            return
        wall = now[0] - self.last[0]
        others = max(0.0, (now[1] - self.last[1]) - (now[2] - self.last[2])) / wall
        self.last = now
        threads = chosen_threads(others, self.cores, self.ceiling, self.threads)
        if threads != self.threads:
            self.threads = threads
            self.set_threads(threads)
