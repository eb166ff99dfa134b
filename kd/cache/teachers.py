"""Teachers: trained taggers loaded from their MLflow runs, run over sentences to produce the
per-token outputs students learn from. Shared by caching and by live-teacher distillation."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kd.data.batching import Batch, EncodedDataset, bucketed_batches
from kd.data.types import Sentence
from kd.data.vocab import Vocabularies
from kd.errors import KdError
from kd.models.tagger import Tagger, TaggerOutput
from kd.tracking.models import load_logged_model
from kd.tracking.runs import fail_if_abandoned
from kd.training.device import autocast
from kd.training.evaluate import dataset_form_table

ENSEMBLE_KINDS = ("single", "seeds", "mixed")


@dataclass
class Teacher:
    run_id: str
    model: Tagger
    vocabularies: Vocabularies
    corpora: list[str]  # the corpus names or folders it was trained with
    data_dir: str | None

    @property
    def output(self) -> str:
        return self.model.config.output


def load_teacher(run_id: str, client, tracking_uri: str, device: torch.device) -> Teacher:
    try:
        run = client.get_run(run_id)
    except Exception:
        raise KdError(f"--teacher {run_id}: no such run in the tracking store") from None
    run = fail_if_abandoned(client, run)
    if run.data.tags.get("model_kind") not in ("mtm", "stm"):
        raise KdError(f"--teacher {run_id}: not a trained tagger (model_kind "
                      f"{run.data.tags.get('model_kind')!r}, expected mtm or stm)")
    if run.info.status != "FINISHED":
        raise KdError(f"--teacher {run_id}: the run did not finish (status {run.info.status}"
                      f"{'; ' + run.data.tags['kd.failure'] if 'kd.failure' in run.data.tags else ''})")
    saved = load_logged_model(run_id, tracking_uri, device)
    params = run.data.params
    return Teacher(run_id=run_id, model=saved.model, vocabularies=saved.vocabularies,
                   corpora=[c for c in params.get("corpora", "").split(",") if c],
                   data_dir=params.get("data_dir") or None)


def ensemble_kind(teachers: Sequence[Teacher]) -> str:
    if len(teachers) == 1:
        return "single"
    return "seeds" if len({t.output for t in teachers}) == 1 else "mixed"


def check_ensemble(teachers: Sequence[Teacher]) -> None:
    """Averaging is only meaningful over the same corpora with the same tags in the same order."""
    first = teachers[0]
    for other in teachers[1:]:
        if other.model.task_names != first.model.task_names:
            raise KdError(f"teachers {first.run_id} and {other.run_id} cover different corpora "
                          f"({', '.join(first.model.task_names)} vs {', '.join(other.model.task_names)})")
        for task in first.model.task_names:
            if other.vocabularies.tags[task] != first.vocabularies.tags[task]:
                raise KdError(f"teachers {first.run_id} and {other.run_id} have different tag sets for {task}")
        for name in ("task_hidden", "shared_hidden"):
            if getattr(other.model.config, name) != getattr(first.model.config, name):
                raise KdError(f"teachers {first.run_id} and {other.run_id} differ in --{name.replace('_', '-')}")


def layer_widths(teacher: Teacher, task: str) -> dict[str, int]:
    config = teacher.model.config
    tags = len(teacher.vocabularies.tags[task])
    return {"logits": tags, "task": 2 * config.task_hidden, "shared": 2 * config.shared_hidden, "marginals": tags}


def output_layers(teacher: Teacher, task: str, output: TaggerOutput, layers: Sequence[str]) -> dict[str, torch.Tensor]:
    """The requested per-token layers (B, T, D) of one forward pass. `marginals` is the token
    posterior: the CRF's forward-backward marginals for a CRF head, the softmax otherwise."""
    values = {}
    for layer in layers:
        if layer == "logits":
            values[layer] = output.logits.float()
        elif layer == "task":
            values[layer] = output.task_hidden.float()
        elif layer == "shared":
            values[layer] = output.shared_hidden.float()
        elif layer == "marginals":
            crf = teacher.model.crf(task)
            logits = output.logits.float()
            values[layer] = crf.marginals(logits, output.mask) if crf is not None else torch.softmax(logits, dim=2)
        else:
            raise KdError(f"unknown layer {layer!r}")
    return values


@torch.no_grad()
def teacher_batch_outputs(teachers: Sequence[Teacher], task: str, batch_for: Sequence[Batch],
                          layers: Sequence[str], device: torch.device, precision: str,
                          form_tables: Sequence[torch.Tensor | None] | None = None) -> dict[str, torch.Tensor]:
    """The ensemble average of the layers for one batch of sentences; `batch_for[i]` is the
    batch encoded with teacher i's vocabulary (same sentences, same row order), `form_tables[i]`
    optionally teacher i's `Tagger.encode_form_table` of that dataset."""
    total: dict[str, torch.Tensor] = {}
    tables = form_tables if form_tables is not None else [None] * len(teachers)
    for teacher, batch, form_table in zip(teachers, batch_for, tables):
        teacher.model.eval()
        with autocast(device, precision):
            output = teacher.model(batch.to(device), task, form_table)
        for layer, value in output_layers(teacher, task, output, layers).items():
            total[layer] = value if layer not in total else total[layer] + value
    return {layer: value / len(teachers) for layer, value in total.items()}


def teacher_outputs_for_sentences(teachers: Sequence[Teacher], task: str, sentences: Sequence[Sentence],
                                  layers: Sequence[str], device: torch.device, precision: str = "fp32",
                                  batch_size: int = 256) -> dict[str, np.ndarray]:
    """{layer: (tokens, dim) float32} for the sentences, in sentence order, unpadded."""
    datasets = [EncodedDataset(sentences, t.vocabularies, task, with_tags=False) for t in teachers]
    reference = datasets[0]
    widths = layer_widths(teachers[0], task)
    rows = {layer: np.empty((reference.num_tokens, widths[layer]), dtype=np.float32) for layer in layers}
    for teacher in teachers:
        teacher.model.eval()
    form_tables = [dataset_form_table(t.model, d, device, precision) for t, d in zip(teachers, datasets)]
    for sentence_ids in bucketed_batches(reference.lengths, batch_size, rng=None):
        batches = [d.batch(sentence_ids) for d in datasets]
        averaged = teacher_batch_outputs(teachers, task, batches, layers, device, precision, form_tables)
        first = batches[0]
        mask = first.mask
        # Destination of each real token, in the row-major order boolean indexing yields.
        lengths = first.lengths.numpy()
        starts = reference.offsets[first.sentence_ids.numpy()]
        destination = np.repeat(starts, lengths) + (
            np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths))
        for layer, value in averaged.items():
            rows[layer][destination] = value[mask.to(value.device)].cpu().numpy()
    return rows


def teacher_corpus(task: str, teachers: Sequence[Teacher], data_dir: Path | None) -> Path:
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
