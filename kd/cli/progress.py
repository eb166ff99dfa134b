"""What a long `kd` command shows while it works, on stderr: the run id and MLflow UI link as soon as
the run exists, then a live display (rich) of epoch and run progress with tokens/s and time left, the
epoch's mean loss terms and devel F1; for `kd tune` also trials done of N. The library only calls
back (the hooks of kd.training.loop.TrainingHooks, which TrainingDisplay implements without
importing it: that would load torch when kd starts); everything shown is decided here.

All of it is shown only where stderr is a terminal, unless asked (`--progress`): redirected to a
file the live display would be thousands of redrawn lines, and scripts read `--json`. The line that
resumes a stopped run is printed either way (`stop_cleanly`).
"""
from __future__ import annotations

import contextlib
import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TaskProgressColumn, TextColumn, TimeRemainingColumn


def ui_link(tracking_uri: str, experiment_id: str, run_id: str) -> tuple[str, str | None]:
    """The run's page in the MLflow UI, and the command that serves a local store's UI (None when the
    URI is a server). `workflowType` opens MLflow 3's UI on runs rather than on GenAI traces."""
    page = f"#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"
    if tracking_uri.startswith(("http://", "https://")):
        return f"{tracking_uri.rstrip('/')}/{page}", None
    return f"http://127.0.0.1:5000/{page}", f"mlflow ui --backend-store-uri {tracking_uri}"


def announce_run(console: Console, client, tracking_uri: str, run_id: str) -> None:
    """One line naming the run and where to watch it."""
    run = client.get_run(run_id)
    link, serve = ui_link(tracking_uri, run.info.experiment_id, run_id)
    console.print(f"run {run_id} ({run.info.run_name}): {link}" + (f"  (serve it with: {serve})" if serve else ""),
                  highlight=False, soft_wrap=True)


def format_terms(sums: Mapping[str, float], batches: int) -> str:
    """`loss 0.412 · hard 0.300 · kl 0.112`: the epoch's mean loss terms so far, the minimised one first."""
    if not batches:
        return ""
    names = ["loss", *sorted(name for name in sums if name != "loss")]
    return " · ".join(f"{name} {sums[name] / batches:.3f}" for name in names if name in sums)


class TrainingDisplay:
    """The live display of one training run (or of the runs of a study, one after another)."""

    def __init__(self, client, tracking_uri: str, live: bool, console: Console | None = None) -> None:
        from kd.tracking.system import SystemMetrics

        self.client, self.tracking_uri, self.live = client, tracking_uri, live
        self.console = console or Console(stderr=True)
        # Not display, but it starts and stops with each run the display follows.
        self.system_metrics = SystemMetrics(tracking_uri)
        self.run_id: str | None = None
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(bar_width=28), TaskProgressColumn(),
            TextColumn("{task.fields[speed]}"), TimeRemainingColumn(compact=True), TextColumn("{task.fields[info]}"),
            console=self.console, refresh_per_second=4, disable=not live)
        self.epoch_task: TaskID | None = None
        self.run_task: TaskID | None = None
        self._reset()

    def _reset(self) -> None:
        self.epochs, self.epoch_tokens, self.epoch = 0, 0.0, 0
        self.done_tokens, self.sums, self.batches = 0, {}, 0
        self.started, self.devel = time.monotonic(), ""

    def __enter__(self) -> "TrainingDisplay":
        self.progress.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.progress.stop()
        self.system_metrics.stop()

    def on_start(self, run_id: str) -> None:
        """The run exists: name it, and start counting from the epoch it resumes at."""
        if self.live:
            announce_run(self.console, self.client, self.tracking_uri, run_id)
        self._begin(run_id, "run")

    def _begin(self, run_id: str, label: str) -> None:
        """Fresh epoch and run bars (`label` names the run bar) for the run `run_id`."""
        self.run_id = run_id
        self.system_metrics.start(run_id)
        self._reset()
        for task in (self.epoch_task, self.run_task):
            if task is not None:
                self.progress.remove_task(task)
        self.epoch_task = self.progress.add_task("starting", total=None, speed="", info="")
        self.run_task = self.progress.add_task(label, total=None, speed="", info="")

    def _learn_sizes(self, epoch: int) -> None:
        """The run's epochs and tokens per epoch, from its params and `train_tokens` (logged before
        the first batch); after an epoch, the tokens that epoch really had."""
        run = self.client.get_run(self.run_id)
        self.epochs = int(float(run.data.params.get("epochs", epoch)))
        self.epoch_tokens = float(run.data.metrics.get("train_tokens", 0.0)) or 0.0
        self.progress.update(self.run_task, total=self.epochs * self.epoch_tokens or None,
                             completed=(epoch - 1) * self.epoch_tokens)
        if epoch > 1 and not self.devel and "devel_f1" in run.data.metrics:  # resumed: the last epoch's score
            self.devel = f"devel F1 {100 * run.data.metrics['devel_f1']:.2f} (epoch {epoch - 1})"

    def on_batch(self, epoch: int, tokens: int, terms: Mapping[str, float]) -> None:
        if self.run_id is None:
            return
        if epoch != self.epoch:
            if self.epoch:
                self.epoch_tokens = float(self.done_tokens)
            else:
                self._learn_sizes(epoch)
            self.epoch, self.done_tokens, self.sums, self.batches, self.started = epoch, 0, {}, 0, time.monotonic()
            self.progress.reset(self.epoch_task, total=self.epoch_tokens or None, description=f"epoch {epoch}/{self.epochs}")
        self.done_tokens += tokens
        self.batches += 1
        for name, value in terms.items():
            self.sums[name] = self.sums.get(name, 0.0) + value
        if self.done_tokens > (self.epoch_tokens or float("inf")):  # an epoch of a multi-task schedule varies
            self.progress.update(self.epoch_task, total=self.done_tokens)
        speed = self.done_tokens / max(time.monotonic() - self.started, 1e-9)
        info = " · ".join(part for part in (format_terms(self.sums, self.batches), self.devel) if part)
        self.progress.update(self.epoch_task, completed=self.done_tokens, speed=f"{speed:,.0f} tok/s", info=info)
        self.progress.advance(self.run_task, tokens)

    def on_epoch(self, epoch: int, metrics: Mapping[str, float]) -> bool:
        """An epoch callback: keeps the devel F1 of the epoch to show; after the last epoch, says
        what the run does next (scoring and logging took about 10 s of a silent full bar); never
        stops training."""
        if "devel_f1" in metrics:
            self.devel = f"devel F1 {100 * metrics['devel_f1']:.2f} (epoch {epoch})"
        if self.epoch_task is not None:
            info = " · ".join(part for part in (format_terms(self.sums, self.batches), self.devel) if part)
            last = epoch == self.epochs
            self.progress.update(self.epoch_task, info=info, **(
                {"description": "scoring, logging"} if last else {}))
        return False

    def message(self, text: str) -> None:
        """A line above the live display, or alone without one (a tuning trial's result, a warning)."""
        self.console.print(text, highlight=False, soft_wrap=True)

    def warn(self, message: str) -> None:
        self.message(message)

    def stage(self, name: str) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()


class TuneDisplay(TrainingDisplay):
    """A study: trials done of N and the best devel F1, above the current trial's training."""

    def __enter__(self) -> "TuneDisplay":
        super().__enter__()
        self.trials_task = self.progress.add_task("trials", total=None, speed="", info="")
        return self

    def on_trial(self, finished: int, n_trials: int, best: float | None) -> None:
        self.progress.update(self.trials_task, description=f"trials {finished}/{n_trials}", total=n_trials,
                             completed=finished, info=f"best devel F1 {100 * best:.2f}" if best is not None else "")

    def on_start(self, run_id: str) -> None:
        # A trial is not announced: the study's parent run was.
        self._begin(run_id, "trial")


class Interrupted(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so that a run ends as KILLED like after Ctrl-C."""

    def __init__(self, signal_number: int) -> None:
        super().__init__(signal.Signals(signal_number).name)
        self.signal_number = signal_number


def _raise_interrupted(signal_number: int, frame: Any) -> None:
    raise Interrupted(signal_number)


def resume_hint(command: str) -> Callable[[str], str]:
    """What a stopped training run says: its checkpoint stays and the command that resumes it."""
    return lambda run_id: (f"run {run_id} is marked KILLED and keeps its checkpoint. Resume it with:\n"
                           f"  kd {command} --resume {run_id}")


@contextlib.contextmanager
def stop_cleanly(display: TrainingDisplay, after_stop: Callable[[str], str]) -> Iterator[None]:
    """Ctrl-C (SIGINT) and SIGTERM end the command without a traceback: the run is marked KILLED
    (kd.tracking.status.run_status), its checkpoint stays, and `after_stop(run_id)` says what next
    (`resume_hint`); the exit code is 128 + the signal (130, 143)."""
    def said(name: str) -> str:
        if display.run_id is None:
            return f"{name}: stopped before a run was started"
        return f"{name}: stopped; {after_stop(display.run_id)}"

    with _stopped_by_signals(said), display:
        yield


@contextlib.contextmanager
def stop_plan_cleanly(rerun: str) -> Iterator[None]:
    """Ctrl-C and SIGTERM end `kd plan run` as they end training: the plan run is marked KILLED
    (kd.jobs.driver.run_plan) and the workers stop, where SIGTERM's default death left the plan run
    RUNNING in MLflow for ever; one line says how to continue; exit 128 + the signal."""
    with _stopped_by_signals(lambda name: f"{name}: stopped; the plan run is marked KILLED. {rerun} continues "
                                          "it: finished cells are reused, the stopped ones resume from their checkpoints"):
        yield


@contextlib.contextmanager
def _stopped_by_signals(said: Callable[[str], str]) -> Iterator[None]:
    """SIGTERM raised as Ctrl-C's KeyboardInterrupt where the program is (so that `finally` and
    `except BaseException` blocks mark runs KILLED), then `said(signal name)` and exit 128 + the signal."""
    previous = signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        yield
    except KeyboardInterrupt as error:
        number = error.signal_number if isinstance(error, Interrupted) else signal.SIGINT
        click.echo(said(signal.Signals(number).name), err=True)
        sys.exit(128 + number)
    finally:
        signal.signal(signal.SIGTERM, previous)


def wants_live_display(option: bool | None) -> bool:
    """`--progress`/`--no-progress`, or by default whether stderr is a terminal."""
    return sys.stderr.isatty() if option is None else option
