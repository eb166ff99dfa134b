"""What a student needs of a teacher, whatever its architecture: the `TeacherModel` protocol, and
the table of layers a teacher offers (name, width, how to extract it from a forward pass).

A teacher kind is one class that satisfies the protocol plus one entry in
`kd.cache.teachers.TEACHER_KINDS`; a new layer is one `Layer` row in that class's table. Caching,
live distillation and ensembles only go through the protocol.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from kd.data.types import Sentence
from kd.errors import KdError
from kd.models.device import autocast


@dataclass(frozen=True)
class Layer:
    """One per-token output a teacher offers."""

    name: str
    width: Callable[[Any, str], int]  # (teacher, task) -> values per token
    extract: Callable[[Any, str, Any], torch.Tensor]  # (teacher, task, forward output) -> (B, T, width) float32


def layer_table(*layers: Layer) -> dict[str, Layer]:
    return {layer.name: layer for layer in layers}


@runtime_checkable
class TeacherModel(Protocol):
    """A trained tagger a student can learn from."""

    run_id: str
    corpora: list[str]  # the corpus names or folders it was trained with
    data_dir: str | None  # where those were read from
    kind: str  # the key of its class in TEACHER_KINDS
    model: torch.nn.Module
    layers: Mapping[str, Layer]

    @property
    def output(self) -> str: ...

    @property
    def task_names(self) -> list[str]: ...

    def tags(self, task: str) -> list[str]: ...

    def num_parameters(self, task: str) -> int: ...

    def prepare(self, task: str, sentences: Sequence[Sentence], device: torch.device, precision: str) -> Any:
        """Whatever the teacher needs to answer for these sentences repeatedly (encoded once)."""

    def outputs(self, prepared: Any, sentence_ids: np.ndarray, layers: Sequence[str], device: torch.device,
                precision: str) -> dict[str, torch.Tensor]:
        """{layer: (len(sentence_ids), longest, width) float32}, rows in the order of `sentence_ids`."""


def layer_widths(teacher: TeacherModel, task: str) -> dict[str, int]:
    """The width of every layer the teacher offers for `task`."""
    return {name: layer.width(teacher, task) for name, layer in teacher.layers.items()}


def check_layers(teacher: TeacherModel, layers: Sequence[str], option: str) -> None:
    absent = [layer for layer in layers if layer not in teacher.layers]
    if absent:
        raise KdError(f"{option}: the {teacher.kind} teacher {teacher.run_id} has no {', '.join(absent)} layer "
                      f"(it has {', '.join(teacher.layers)})")


def tag_count(teacher: TeacherModel, task: str) -> int:
    return len(teacher.tags(task))


def logits_of(teacher: Any, task: str, output: Any) -> torch.Tensor:
    return output.logits.float()


def marginals_of(teacher: Any, task: str, output: Any) -> torch.Tensor:
    """The token posteriors: the CRF's forward-backward marginals for a CRF head, else the softmax."""
    crf = teacher.model.crf(task)
    logits = output.logits.float()
    return crf.marginals(logits, output.mask) if crf is not None else torch.softmax(logits, dim=2)


# The layers every tagger with a `model.crf(task)` and per-word `logits` offers.
LOGIT_LAYERS = (Layer("logits", tag_count, logits_of), Layer("marginals", tag_count, marginals_of))


def extract(teacher: TeacherModel, task: str, output: Any, layers: Sequence[str]) -> dict[str, torch.Tensor]:
    return {layer: teacher.layers[layer].extract(teacher, task, output) for layer in layers}


def run_corpora(run: Any) -> tuple[list[str], str | None]:
    """The corpora a teacher run trained with, and the data folder they were read from."""
    params = run.data.params
    return [c for c in params.get("corpora", "").split(",") if c], params.get("data_dir") or None


class ModuleTeacher:
    """The protocol's methods for a teacher wrapping a kd tagger module (`model` with `config.output`,
    `task_names`, `num_parameters(task)`, `crf(task)`), whose `prepare` returns (task, dataset, *extra
    forward arguments) and whose dataset's `batch(ids)` builds rows longest first."""

    model: Any

    @property
    def output(self) -> str:
        return self.model.config.output

    @property
    def task_names(self) -> list[str]:
        return self.model.task_names

    def num_parameters(self, task: str) -> int:
        return self.model.num_parameters(task)

    @torch.no_grad()
    def outputs(self, prepared: Any, sentence_ids: np.ndarray, layers: Sequence[str], device: torch.device,
                precision: str) -> dict[str, torch.Tensor]:
        task, dataset, *extra = prepared
        batch = dataset.batch(sentence_ids)
        self.model.eval()
        with autocast(device, precision):
            output = self.model(batch.to(device), task, *extra)
        return in_requested_order(extract(self, task, output, layers), batch.sentence_ids, np.asarray(sentence_ids))


def in_requested_order(values: dict[str, torch.Tensor], batch_ids: torch.Tensor,
                       requested: np.ndarray) -> dict[str, torch.Tensor]:
    """Rows of a batch (built longest first) put back in the order the sentences were asked for."""
    batch_ids = batch_ids.numpy()
    if np.array_equal(batch_ids, requested):
        return values
    row_of = {int(sentence): row for row, sentence in enumerate(batch_ids)}
    rows = torch.tensor([row_of[int(sentence)] for sentence in requested])
    return {layer: value[rows.to(value.device)] for layer, value in values.items()}
