"""`kd cache-logits`: run one teacher or an ensemble over corpora and store what it knows as a
cache run whose artifact is the cache folder."""
from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kd.cache.store import DTYPES, LAYERS, CacheWriter, Manifest
from kd.cache.teachers import (check_ensemble, ensemble_kind, layer_widths, load_teacher, teacher_corpus,
                               teacher_outputs_for_sentences)
from kd.data.conll import read_unlabelled
from kd.data.text.overlap import check_eval_overlap, text_manifest
from kd.data.corpora import load_split
from kd.data.types import UNLABELLED_SPLIT
from kd.errors import FieldError
from kd.tracking.runs import TrackedRun, fail_if_abandoned, git_commit
from kd.tracking.status import run_status
from kd.models.device import resolve_device

CACHE_ARTIFACT = "cache"


@dataclass
class CacheJob:
    teacher_runs: list[str]
    tasks: list[str] | None = None  # None: every corpus of the teachers
    splits: list[str] = field(default_factory=lambda: ["train", "devel"])
    layers: list[str] = field(default_factory=lambda: ["logits"])
    dtype: str = "float16"
    data_dir: str | None = None
    device: str = "auto"
    precision: str = "fp32"
    batch_size: int = 256
    experiment: str = "kd"
    run_name: str | None = None
    unlabelled: str | None = None  # a file of sentences without gold tags, cached for every task
    # Cache it even when it holds sentences of a cached corpus's devel or test split (transductive
    # experiments); the run is tagged with how many.
    allow_eval_overlap: bool = False

    @property
    def cached_splits(self) -> list[str]:
        return [*self.splits, *([UNLABELLED_SPLIT] if self.unlabelled else [])]

    def __post_init__(self) -> None:
        if not self.teacher_runs:
            raise FieldError("teacher_runs", None, "give at least one teacher run id")
        unknown = [layer for layer in self.layers if layer not in LAYERS]
        if unknown or not self.layers:
            raise FieldError("layers", ','.join(self.layers), f"use a comma-separated subset of {', '.join(LAYERS)}")
        if self.dtype not in DTYPES:
            raise FieldError("dtype", self.dtype, f"use one of {', '.join(DTYPES)}")


@dataclass
class CacheSummary:
    run_id: str
    manifest: Manifest
    metrics: dict[str, float]


def build_cache(job: CacheJob, client, tracking_uri: str, attach_to: str | None = None) -> CacheSummary:
    device = resolve_device(job.device)
    teachers = [load_teacher(run_id, client, tracking_uri, device) for run_id in job.teacher_runs]
    check_ensemble(teachers, job.layers)
    all_tasks = teachers[0].task_names
    tasks = job.tasks or all_tasks
    missing = [t for t in tasks if t not in all_tasks]
    if missing:
        raise FieldError("tasks", None, f"the teacher has no {', '.join(missing)}; it has {', '.join(all_tasks)}")
    sentences, overlap = _sentences_to_cache(job, tasks, teachers)
    kind = ensemble_kind(teachers)

    run = TrackedRun.start(client, job.experiment, job.run_name, {
        "model_kind": "cache", "task": ",".join(tasks), "teacher_runs": ",".join(job.teacher_runs),
        "ensemble": kind, "output": ",".join(t.output for t in teachers),
        "teacher_kind": ",".join(t.kind for t in teachers), "git_commit": git_commit(),
        **({"unlabelled_eval_overlap": overlap} if overlap else {})},
        attach_to=attach_to)
    manifest_file = text_manifest(job.unlabelled) if job.unlabelled else None
    if manifest_file is not None:
        run.log_artifact(manifest_file, "unlabelled")
    run.log_params({"teacher_runs": ",".join(job.teacher_runs), "tasks": ",".join(tasks),
                    "splits": ",".join(job.splits), "layers": ",".join(job.layers), "dtype": job.dtype,
                    "precision": job.precision, "batch_size": job.batch_size, "device": job.device,
                    **({"unlabelled": str(Path(job.unlabelled).resolve())} if job.unlabelled else {})})
    with run_status(run), tempfile.TemporaryDirectory() as staging:
        started = time.perf_counter()
        writer = CacheWriter(Path(staging) / CACHE_ARTIFACT, job.dtype)
        try:
            entries, tokens = {}, 0
            for task in tasks:
                entries[task] = {}
                for split in job.cached_splits:
                    split_sentences = [s.tokens for s in sentences[task][split]]
                    rows = teacher_outputs_for_sentences(teachers, task, sentences[task][split], job.layers, device,
                                                         job.precision, job.batch_size)
                    entries[task][split] = writer.write_split(task, split, split_sentences, rows)
                    tokens += entries[task][split].tokens
            manifest = Manifest(
                teacher_runs=list(job.teacher_runs), ensemble=kind, teacher_outputs=[t.output for t in teachers],
                tasks={task: teachers[0].tags(task) for task in tasks}, splits=entries,
                layers=list(job.layers), dtype=job.dtype,
                widths={task: {layer: layer_widths(teachers[0], task)[layer] for layer in job.layers} for task in tasks},
                teacher_parameters={task: max(t.num_parameters(task) for t in teachers) for task in tasks},
                teacher_kinds=[t.kind for t in teachers])
            directory = writer.commit(manifest)
        except BaseException as error:
            writer.abort(error)
            raise
        seconds = time.perf_counter() - started
        bytes_per_token = {layer: sum((directory / task / split / f"{layer}.npy").stat().st_size
                                      for task in tasks for split in job.cached_splits) / max(tokens, 1)
                           for layer in job.layers}
        metrics = {"cache_seconds": seconds, "cached_tokens": float(tokens), "tokens_per_second": tokens / seconds,
                   **{f"bytes_per_token/{layer}": value for layer, value in bytes_per_token.items()}}
        run.log_metrics(metrics)
        run.log_artifact(directory, CACHE_ARTIFACT)
        run.log_json(asdict(job), "config.json")
    return CacheSummary(run_id=run.run_id, manifest=manifest, metrics=metrics)


def _sentences_to_cache(job: CacheJob, tasks: list[str], teachers) -> tuple[dict[str, dict[str, list]], int]:
    """task -> split -> sentences: the corpus splits, and the unlabelled file for every task; and how
    many unlabelled sentences the corpora's devel and test splits hold (refused unless allowed)."""
    data_dir = Path(job.data_dir) if job.data_dir else None
    corpora = {task: teacher_corpus(task, teachers, data_dir) for task in tasks}
    sentences = {task: {split: load_split(corpora[task], split) for split in job.splits} for task in tasks}
    overlap = None
    if job.unlabelled:
        unlabelled = read_unlabelled(job.unlabelled)
        overlap = check_eval_overlap(job.unlabelled, [s.tokens for s in unlabelled], list(corpora.values()),
                                     job.allow_eval_overlap)
        for task in tasks:
            sentences[task][UNLABELLED_SPLIT] = unlabelled
    return sentences, overlap.count if overlap else 0


def open_cache_run(run_id: str, client, tracking_uri: str, download_dir: Path | None = None):
    """The cache of a finished cache run, memory-mapped in place when the artifact store is local
    (else downloaded first), and the run itself."""
    from urllib.parse import urlparse

    import mlflow.artifacts

    from kd.cache.store import CacheReader

    try:
        run = client.get_run(run_id)
    except Exception:
        raise FieldError("cache_run", run_id, "no such run in the tracking store") from None
    run = fail_if_abandoned(client, run)
    if run.data.tags.get("model_kind") != "cache":
        raise FieldError("cache_run", run_id, f"not a cache run (model_kind {run.data.tags.get('model_kind')!r})")
    if run.info.status != "FINISHED":
        raise FieldError("cache_run", run_id, f"the caching did not finish (status {run.info.status}"
                      f"{'; ' + run.data.tags['kd.failure'] if 'kd.failure' in run.data.tags else ''}); "
                      "re-run kd cache-logits")
    parsed = urlparse(run.info.artifact_uri)
    if parsed.scheme in ("", "file"):
        directory = Path(parsed.path) / CACHE_ARTIFACT
    else:
        target = download_dir or Path(tempfile.mkdtemp(prefix=f"kd-cache-{run_id}-"))
        directory = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=CACHE_ARTIFACT,
                                                             dst_path=str(target), tracking_uri=tracking_uri))
    return CacheReader(directory), run
