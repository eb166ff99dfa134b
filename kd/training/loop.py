"""The epoch loop shared by single-task models, teachers and students.

What differs between them is passed in (a Trainable): which (task, batch) pairs make an epoch, the
loss, and which optimizer steps for which task. The loop owns the rest: precision, gradient
clipping, per-epoch evaluation and best-epoch selection, hooks that hear it and may stop training,
and an atomic checkpoint after every epoch from which a run resumes to the same result.
"""
from __future__ import annotations

import contextlib
import io
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kd.data.batching import Batch
from kd.errors import KdError, disk_full_names
from kd.models.device import autocast
from kd.option_schema import check_fields, default
from kd.training.adam import Optimizer
from kd.utils.atomic import atomic_file

# The batches of one epoch, drawn with the loop's generator so a resumed run draws the same ones.
EpochPlan = Callable[[np.random.Generator], Iterable[tuple[str, Batch]]]
# (task, batch on device) -> named loss terms; "loss" is the one minimised.
LossFunction = Callable[[str, Batch], Mapping[str, torch.Tensor]]


@dataclass
class TrainingOptions:
    """How a model trains (kd.option_schema's training options)."""

    epochs: int = default("epochs")
    batch_size: int = default("batch_size")
    learning_rate: float = default("learning_rate")
    clip_norm: float = default("clip_norm")
    seed: int = default("seed")
    precision: str = default("precision")

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass
class TrainingState:
    """Everything a resumed run needs to continue exactly where it stopped."""

    epoch: int = 0  # epochs completed
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int | None = None
    best_score: float | None = None
    best_model: dict[str, torch.Tensor] | None = None
    model: dict[str, torch.Tensor] | None = None
    optimizers: dict[str, Any] = field(default_factory=dict)
    torch_rng: torch.Tensor | None = None
    numpy_rng: dict[str, Any] | None = None
    job: dict[str, Any] | None = None  # the options of the run, so a resume needs none

    def save(self, path: str | Path) -> None:
        # Serialised in memory, then written by Python: torch.save straight to a file reports a
        # full disk as an opaque RuntimeError ("unexpected pos"), a file write as ENOSPC.
        buffer = io.BytesIO()
        torch.save(self.__dict__, buffer)
        with disk_full_names(Path(path).parent), atomic_file(path, "wb") as handle:
            handle.write(buffer.getbuffer())

    @classmethod
    def load(cls, path: str | Path) -> "TrainingState":
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise KdError(f"{path}: checkpoint not found") from None
        except Exception as error:  # a truncated or foreign file
            raise KdError(f"{path}: not a readable kd checkpoint ({error})") from None
        return cls(**data)


@dataclass
class TrainingResult:
    state: TrainingState
    stopped_early: bool


def clone_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}


def distinct_optimizers(optimizers: Mapping[str, Optimizer]) -> dict[str, Optimizer]:
    """Each optimizer once, under the first task that steps it: tasks may share one optimizer, whose
    state a checkpoint then holds once."""
    first: dict[int, tuple[str, Optimizer]] = {}
    for task, optimizer in optimizers.items():
        first.setdefault(id(optimizer), (task, optimizer))
    return dict(first.values())


class TrainingHooks:
    """What a caller hears of training, as one object (the way Optuna's callbacks or flair's trainer
    plugins are one protocol): the run id once a tracked job made it, every batch's tokens and loss
    terms, every epoch's metrics (True stops training after it), each stage of a step (zero_grad,
    forward (all), backward (all), gradient clipping, optimizer step: a profiler's timers,
    bench/stage_profile.py) and warnings. Override what you need; these hear nothing, stop nothing
    and print warnings on stderr."""

    def on_start(self, run_id: str) -> None:
        pass

    def on_batch(self, epoch: int, tokens: int, terms: Mapping[str, float]) -> None:
        pass

    def on_epoch(self, epoch: int, metrics: dict[str, float]) -> bool:
        return False

    def stage(self, name: str) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def warn(self, message: str) -> None:
        print(message, file=sys.stderr)


class HookChain(TrainingHooks):
    """Several hooks heard in order; training stops when any of them asks; a warning is said once, by
    the first hooks that word warnings their own way (or on stderr)."""

    def __init__(self, *hooks: TrainingHooks) -> None:
        self.hooks = hooks

    def on_start(self, run_id: str) -> None:
        for hooks in self.hooks:
            hooks.on_start(run_id)

    def on_batch(self, epoch: int, tokens: int, terms: Mapping[str, float]) -> None:
        for hooks in self.hooks:
            hooks.on_batch(epoch, tokens, terms)

    def on_epoch(self, epoch: int, metrics: dict[str, float]) -> bool:
        return any([bool(hooks.on_epoch(epoch, metrics)) for hooks in self.hooks])

    @contextlib.contextmanager
    def stage(self, name: str):
        with contextlib.ExitStack() as stack:
            for hooks in self.hooks:
                stack.enter_context(hooks.stage(name))
            yield

    def warn(self, message: str) -> None:
        next((h for h in self.hooks if type(h).warn is not TrainingHooks.warn), TrainingHooks()).warn(message)


@dataclass
class Trainable:
    """What a training run steps: the module, the optimizer of each task, the batches of an epoch
    and the loss."""

    model: torch.nn.Module
    optimizers: Mapping[str, Optimizer]
    plan_epoch: EpochPlan
    loss_function: LossFunction


def training_step(model: torch.nn.Module, optimizer: Optimizer, loss_function: LossFunction,
                  task: str, batch: Batch, options: TrainingOptions, device: torch.device,
                  stage: Callable[[str], contextlib.AbstractContextManager]) -> Mapping[str, torch.Tensor]:
    """One optimizer step on one batch (already on `device`); returns the loss terms."""
    with stage("zero_grad"):
        optimizer.zero_grad(set_to_none=True)
    with stage("forward (all)"), autocast(device, options.precision):
        terms = loss_function(task, batch)
    with stage("backward (all)"):
        terms["loss"].backward()
    if options.clip_norm > 0:
        with stage("gradient clipping"):
            parameters = [p for group in optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(parameters, options.clip_norm)
    with stage("optimizer step"):
        optimizer.step()
    return terms


def train_epoch(trainable: Trainable, batches: Iterable[tuple[str, Batch]], options: TrainingOptions,
                device: torch.device, hooks: TrainingHooks, epoch: int) -> dict[str, float]:
    """A step per batch; returns each loss term's mean over the epoch as `train_<term>`. The hooks
    hear each batch's tokens and loss terms."""
    trainable.model.train()
    sums: dict[str, float] = {}
    count = 0
    for task, batch in batches:
        terms = training_step(trainable.model, trainable.optimizers[task], trainable.loss_function, task,
                              batch.to(device), options, device, hooks.stage)
        values = {name: float(value.detach()) for name, value in terms.items()}
        for name, value in values.items():
            sums[name] = sums.get(name, 0.0) + value
        count += 1
        hooks.on_batch(epoch, batch.num_tokens, values)
    return {f"train_{name}": total / max(count, 1) for name, total in sums.items()}


def restore(model: torch.nn.Module, optimizers: Mapping[str, Optimizer], state: TrainingState,
            generator: np.random.Generator, seed: int) -> None:
    """Puts model, optimizers and random generators where a checkpointed `state` left them; a fresh
    state only seeds torch."""
    if state.model is None:
        torch.manual_seed(seed)
        return
    try:
        model.load_state_dict(state.model)
    except RuntimeError as error:
        raise KdError(f"the checkpoint does not fit this model (did the data change?): "
                      f"{str(error).splitlines()[0]}") from None
    for task, optimizer in distinct_optimizers(optimizers).items():
        optimizer.load_state_dict(state.optimizers[task])
    torch.set_rng_state(state.torch_rng)
    generator.bit_generator.state = state.numpy_rng


def save_checkpoint(state: TrainingState, model: torch.nn.Module, optimizers: Mapping[str, Optimizer],
                    generator: np.random.Generator, path: Path) -> None:
    state.model = clone_state(model)
    state.optimizers = {task: optimizer.state_dict() for task, optimizer in distinct_optimizers(optimizers).items()}
    state.torch_rng = torch.get_rng_state()
    state.numpy_rng = generator.bit_generator.state
    state.save(path)


def train(trainable: Trainable, options: TrainingOptions, device: torch.device, *,
          evaluate_epoch: Callable[[int], dict[str, float]] | None = None, selection_metric: str | None = None,
          checkpoint_path: Path | None = None, state: TrainingState | None = None,
          hooks: TrainingHooks | None = None) -> TrainingResult:
    """Trains for `options.epochs` epochs (or until a hook stops it).

    `trainable.optimizers` maps each task to the optimizer that steps when a batch of that task is
    seen. With `selection_metric`, the weights of the epoch with the highest value of that metric
    are restored at the end; otherwise the last epoch's weights are kept. A `state` loaded from a
    checkpoint (one with model weights) continues where it stopped.
    """
    state = state or TrainingState()
    hooks = hooks or TrainingHooks()
    model, optimizers = trainable.model, trainable.optimizers
    generator = np.random.default_rng(options.seed)
    restore(model, optimizers, state, generator, options.seed)
    stopped_early = False
    while state.epoch < options.epochs and not stopped_early:
        epoch = state.epoch + 1
        metrics = train_epoch(trainable, trainable.plan_epoch(generator), options, device, hooks, epoch)
        if evaluate_epoch is not None:
            metrics.update(evaluate_epoch(epoch))
        if selection_metric is not None:
            score = metrics[selection_metric]
            if state.best_score is None or score > state.best_score:
                state.best_score, state.best_epoch, state.best_model = score, epoch, clone_state(model)
        state.history.append(metrics)
        state.epoch = epoch
        stopped_early = hooks.on_epoch(epoch, metrics)
        if checkpoint_path is not None:
            save_checkpoint(state, model, optimizers, generator, checkpoint_path)
    if selection_metric is not None and state.best_model is not None:
        model.load_state_dict(state.best_model)
    return TrainingResult(state=state, stopped_early=stopped_early)
