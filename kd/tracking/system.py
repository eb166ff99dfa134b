"""MLflow's system metrics (CPU, memory, disk, network; GPU where a driver is present) for kd's runs,
where psutil is installed: the run page's "System metrics" then shows what the machine did."""
from __future__ import annotations

import importlib.util
import logging
from typing import Any

# A sample every 10 s costs nothing measurable next to a training step, and a 30 s run still gets
# a few points.
SAMPLING_SECONDS = 10.0


def system_metrics_available() -> bool:
    return importlib.util.find_spec("psutil") is not None


class SystemMetrics:
    """Samples the machine into one run at a time: `start(run_id)` (again for the next run, e.g. the
    next tuning trial), `stop()` at the end; without psutil both do nothing."""

    def __init__(self, tracking_uri: str, interval: float = SAMPLING_SECONDS) -> None:
        self.tracking_uri, self.interval = tracking_uri, interval
        self.monitor: Any = None

    def start(self, run_id: str) -> None:
        self.stop()
        if not system_metrics_available():
            return
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        # The monitor announces itself at INFO on every start; kd prints its own run line.
        logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
        self.monitor = SystemMetricsMonitor(run_id, sampling_interval=self.interval, samples_before_logging=1,
                                            tracking_uri=self.tracking_uri)
        self.monitor.start()

    def stop(self) -> None:
        if self.monitor is not None:
            self.monitor.finish()
            self.monitor = None

    def __enter__(self) -> "SystemMetrics":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()
