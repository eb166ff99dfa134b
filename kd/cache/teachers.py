"""Teachers: trained taggers loaded from their MLflow runs, run over sentences to produce the
per-token outputs students learn from. Shared by caching and by live-teacher distillation.

Every teacher satisfies `kd.cache.protocol.TeacherModel`; `TEACHER_KINDS` names the class of
each kind, read from a run's `teacher_kind` tag (runs without it are BiLSTM taggers)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from kd.cache.protocol import LOGIT_LAYERS, Layer, ModuleTeacher, TeacherModel, check_layers, layer_table, run_corpora
from kd.cache.protocol import layer_widths as layer_widths
from kd.cache.transformer_teacher import TransformerTeacher
from kd.data.batching import EncodedDataset, bucketed_batches
from kd.data.types import Sentence
from kd.data.vocab import Vocabularies
from kd.errors import FieldError, KdError
from kd.models.predict import dataset_form_table
from kd.models.tagger import Tagger
from kd.tracking.logged_models import load_logged_model
from kd.tracking.runs import fail_if_abandoned


@dataclass
class BiLSTMTeacher(ModuleTeacher):
    """kd's BiLSTM tagger (an STM or MTM run) as a teacher."""

    run_id: str
    model: Tagger
    vocabularies: Vocabularies
    corpora: list[str]  # the corpus names or folders it was trained with
    data_dir: str | None

    kind: ClassVar[str] = "bilstm"
    layers: ClassVar[dict[str, Layer]] = layer_table(
        *LOGIT_LAYERS,
        Layer("task", lambda t, task: 2 * t.model.config.task_hidden, lambda t, task, out: out.task_hidden.float()),
        Layer("shared", lambda t, task: 2 * t.model.config.shared_hidden, lambda t, task, out: out.shared_hidden.float()))

    @classmethod
    def load(cls, run_id: str, run: Any, tracking_uri: str, device: torch.device) -> "BiLSTMTeacher":
        saved = load_logged_model(run_id, tracking_uri, device)
        corpora, data_dir = run_corpora(run)
        return cls(run_id=run_id, model=saved.model, vocabularies=saved.vocabularies, corpora=corpora,
                   data_dir=data_dir)

    def tags(self, task: str) -> list[str]:
        return list(self.vocabularies.tags[task])

    def prepare(self, task: str, sentences: Sequence[Sentence], device: torch.device, precision: str) -> Any:
        self.model.eval()
        dataset = EncodedDataset(sentences, self.vocabularies, task, with_tags=False)
        return task, dataset, dataset_form_table(self.model, dataset, device, precision)


TEACHER_KINDS: dict[str, type] = {"bilstm": BiLSTMTeacher, "transformer": TransformerTeacher}


def load_teacher(run_id: str, client, tracking_uri: str, device: torch.device) -> TeacherModel:
    try:
        run = client.get_run(run_id)
    except Exception:
        raise FieldError("teacher_runs", run_id, "no such run in the tracking store") from None
    run = fail_if_abandoned(client, run)
    if run.data.tags.get("model_kind") not in ("mtm", "stm"):
        raise FieldError("teacher_runs", run_id, f"not a trained tagger (model_kind "
                      f"{run.data.tags.get('model_kind')!r}, expected mtm or stm)")
    if run.info.status != "FINISHED":
        raise FieldError("teacher_runs", run_id, f"the run did not finish (status {run.info.status}"
                      f"{'; ' + run.data.tags['kd.failure'] if 'kd.failure' in run.data.tags else ''})")
    kind = run.data.tags.get("teacher_kind", "bilstm")
    if kind not in TEACHER_KINDS:
        raise FieldError("teacher_runs", run_id, f"unknown teacher_kind {kind!r} (known: {', '.join(TEACHER_KINDS)})")
    return TEACHER_KINDS[kind].load(run_id, run, tracking_uri, device)


def ensemble_kind(teachers: Sequence[TeacherModel]) -> str:
    if len(teachers) == 1:
        return "single"
    return "seeds" if len({(t.kind, t.output) for t in teachers}) == 1 else "mixed"


def check_ensemble(teachers: Sequence[TeacherModel], layers: Sequence[str] = ()) -> None:
    """Averaging is only meaningful over the same corpora with the same tags in the same order, and
    layers of the same width."""
    first = teachers[0]
    for teacher in teachers:
        check_layers(teacher, layers, "--layers")
    for other in teachers[1:]:
        if other.task_names != first.task_names:
            raise KdError(f"teachers {first.run_id} and {other.run_id} cover different corpora "
                          f"({', '.join(first.task_names)} vs {', '.join(other.task_names)})")
        for task in first.task_names:
            if other.tags(task) != first.tags(task):
                raise KdError(f"teachers {first.run_id} and {other.run_id} have different tag sets for {task}")
            for layer in layers:
                widths = (first.layers[layer].width(first, task), other.layers[layer].width(other, task))
                if widths[0] != widths[1]:
                    raise KdError(f"teachers {first.run_id} and {other.run_id} differ in the width of the {layer} "
                                  f"layer ({widths[0]} vs {widths[1]})")


def ensemble_outputs(teachers: Sequence[TeacherModel], prepared: Sequence[Any], sentence_ids: np.ndarray,
                     layers: Sequence[str], device: torch.device, precision: str) -> dict[str, torch.Tensor]:
    """The teachers' mean of each layer, rows in the order of `sentence_ids`."""
    total: dict[str, torch.Tensor] = {}
    for teacher, ready in zip(teachers, prepared):
        for layer, value in teacher.outputs(ready, sentence_ids, layers, device, precision).items():
            total[layer] = value if layer not in total else total[layer] + value
    return {layer: value / len(teachers) for layer, value in total.items()}


def teacher_outputs_for_sentences(teachers: Sequence[TeacherModel], task: str, sentences: Sequence[Sentence],
                                  layers: Sequence[str], device: torch.device, precision: str = "fp32",
                                  batch_size: int = 256) -> dict[str, np.ndarray]:
    """{layer: (tokens, dim) float32} for the sentences, in sentence order, unpadded."""
    lengths = np.array([len(s) for s in sentences], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    widths = layer_widths(teachers[0], task)
    rows = {layer: np.empty((int(offsets[-1]), widths[layer]), dtype=np.float32) for layer in layers}
    prepared = [t.prepare(task, sentences, device, precision) for t in teachers]
    for sentence_ids in bucketed_batches(lengths, batch_size, rng=None):
        averaged = ensemble_outputs(teachers, prepared, sentence_ids, layers, device, precision)
        batch_lengths = lengths[sentence_ids]
        width = int(batch_lengths.max())
        mask = torch.from_numpy(np.arange(width)[None, :] < batch_lengths[:, None])
        # Destination of each real token, in the row-major order boolean indexing yields.
        destination = np.repeat(offsets[sentence_ids], batch_lengths) + (
            np.arange(int(batch_lengths.sum())) - np.repeat(np.cumsum(batch_lengths) - batch_lengths, batch_lengths))
        for layer, value in averaged.items():
            rows[layer][destination] = value[mask.to(value.device)].cpu().numpy()
    return rows


def teacher_corpus(task: str, teachers: Sequence[TeacherModel], data_dir: Path | None) -> Path:
    """Where the corpus of `task` is: under data_dir, else where the teacher was trained from."""
    from kd.data.corpora import corpus_name, resolve_corpus_dir

    try:
        return resolve_corpus_dir(task, data_dir)
    except KdError as first_error:
        for teacher in teachers:
            for corpus in teacher.corpora:
                try:
                    directory = resolve_corpus_dir(corpus, Path(teacher.data_dir) if teacher.data_dir else None)
                except KdError:
                    continue
                if corpus_name(directory) == task:
                    return directory
        raise first_error
