"""What a student needs beyond single-task training: its distillation options, projections when
the student is smaller than its teacher, and the distillation loss over the teacher's targets for
each batch (kd.cache.knowledge: from a cache, or from live teachers)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from kd.data.batching import Batch
from kd.data.types import UNLABELLED_SPLIT
from kd.errors import FieldError, KdError
from kd.losses.distill import DistillWeights, StudentView, check_loss_weights, get_loss
from kd.models.tagger import Tagger
from kd.option_schema import check_fields, default, implied_beta


@dataclass
class DistillOptions:
    """What a student learns from (a cache or live teachers) and how (kd.option_schema's distill
    options)."""

    loss: str = default("loss")
    alpha: float = default("alpha")
    beta: float | None = default("beta")  # None: 1 - alpha
    gamma: float = default("gamma")
    kappa: float = default("kappa")
    tau: float = default("tau")
    cache_run: str | None = None
    teacher_runs: list[str] | None = None
    # Sentences without gold tags the student also learns from, through the teacher's outputs alone
    # (the hard-label term skips them); a cache must hold them (kd cache-logits --unlabelled).
    unlabelled: str | None = None
    # Each epoch draws this many unlabelled sentences per labelled one, continuing through the file
    # from epoch to epoch (kd.training.unlabelled); None: the whole file every epoch.
    unlabelled_ratio: float | None = None
    # What the text is, for the model's identity: the recipe that made it (a plan's text
    # specification, the same for every corpus), or None: "a file given by the user". Its digest
    # stays on the run (tag unlabelled_sha256) for provenance.
    unlabelled_recipe: str | None = None
    # Run even when the unlabelled text holds sentences of the corpus's devel or test split (a
    # transductive experiment); the run is tagged with how many.
    allow_eval_overlap: bool = False

    def __post_init__(self) -> None:
        check_fields(self)
        if self.unlabelled_ratio is not None and not self.unlabelled:
            raise FieldError("unlabelled_ratio", self.unlabelled_ratio, "applies only with unlabelled text")
        if (self.cache_run is None) == (not self.teacher_runs):
            raise KdError("give exactly one of --cache RUN_ID and --teacher RUN_ID[,RUN_ID...]")
        check_loss_weights(self.loss, self.weights())

    def target_splits(self, train_splits: Sequence[str]) -> list[str]:
        """The splits whose teacher targets the student reads, in its training data's order: its
        training splits, then its unlabelled sentences (a cache keeps them as their own split)."""
        return [*train_splits, *([UNLABELLED_SPLIT] if self.unlabelled else [])]

    def weights(self) -> DistillWeights:
        return DistillWeights(alpha=self.alpha, beta=implied_beta(self.alpha, self.beta), gamma=self.gamma,
                              kappa=self.kappa, tau=self.tau)

    @property
    def layers(self) -> tuple[str, ...]:
        return get_loss(self.loss).layers


class StudentModel(nn.Module):
    """The student tagger plus the projections that map its hidden states to the teacher's sizes
    (trained with it, not part of the saved model)."""

    def __init__(self, tagger: Tagger, teacher_widths: Mapping[str, int], layers: Sequence[str]) -> None:
        super().__init__()
        self.tagger = tagger
        config = tagger.config
        # A transformer's `encoder` layer is matched by the student's task BiLSTM: both are the
        # states the output layer reads.
        own = {"task": 2 * config.task_hidden, "shared": 2 * config.shared_hidden, "encoder": 2 * config.task_hidden}
        self.projections = nn.ModuleDict({
            layer: nn.Linear(own[layer], teacher_widths[layer])
            for layer in own if layer in layers and own[layer] != teacher_widths[layer]})

    def project(self, layer: str, states: torch.Tensor) -> torch.Tensor:
        return self.projections[layer](states) if layer in self.projections else states


def distillation_loss(student: StudentModel, options: DistillOptions, source) -> Any:
    registered = get_loss(options.loss)
    weights = options.weights()

    def loss(task: str, batch: Batch) -> dict[str, torch.Tensor]:
        output = student.tagger(batch, task)
        view = StudentView(output=output, crf=student.tagger.crf(task),
                           task_hidden=student.project("task", output.task_hidden),
                           shared_hidden=student.project("shared", output.shared_hidden),
                           encoder_hidden=student.project("encoder", output.task_hidden))
        return registered.function(view, source(batch), batch.tags, weights)
    return loss
