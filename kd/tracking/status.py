"""How a run ends: the status a tracked block leaves its run in."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

from kd.tracking.runs import TrackedRun


@contextlib.contextmanager
def run_status(run: TrackedRun) -> Iterator[None]:
    """Ends the run FINISHED, or FAILED/KILLED (resumable from its checkpoint) if the block raises."""
    try:
        yield
    except KeyboardInterrupt:
        run.finish("KILLED")
        raise
    except BaseException:
        run.finish("FAILED")
        raise
    run.finish("FINISHED")
