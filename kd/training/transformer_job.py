"""Fine-tuning a Hugging Face encoder as a (multi-task) token classifier, the transformer teacher:
the shared encoder plus one head per corpus, trained with the MTM's alternating per-task schedule
and optimizers (`alternating_plan`, `task_optimizers`), evaluated and tracked as one MLflow run
logged like the MTM (`model_kind = mtm`, tag `teacher_kind = transformer`, per-corpus F1)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from kd.data.vocab import tag_list
from kd.errors import FieldError
from kd.models.device import resolve_device
from kd.models.predict import PREDICT_BATCH_TOKENS, decode_in_batches
from kd.data.corpora import split_path
from kd.models.transformer import (WORD_OUTPUT, SentenceTooLong, SubwordDataset, TransformerTagger,
                                    build_transformer, save_transformer)
from kd.option_schema import check_fields, default
from kd.tracking.logged_models import log_tagger_model
from kd.tracking.runs import TrackedRun, git_commit
from kd.tracking.status import run_status
from kd.tracking.metrics import DESCRIPTION_TAG, corpus_metric, headline
from kd.training.evaluate import EntityScores, Evaluator, metric_names
from kd.training.identity import default_run_name, identity_tags, transformer_definition
from kd.training.job_definition import RunPlan, checkpoint_file, job_to_run
from kd.training.assemble import devel_selection, load_job_tasks, score_splits, scored_splits
from kd.training.loop import HookChain, Trainable, TrainingHooks, TrainingOptions, TrainingState, train
from kd.training.schedule import alternating_plan, supervised_loss, task_optimizers
from kd.training.tagger_job import EpochLog, RunSummary, log_final_artifacts
from kd.training.weighing import model_bytes

# Fine-tuning defaults where the BiLSTM's (20 epochs at 1e-3) do not fit: Adam at 1e-3 wrecks a
# pretrained encoder; 5e-5 and 3 epochs are the usual BERT fine-tuning choices (Devlin et al. 2019).
TRANSFORMER_LEARNING_RATE = 5e-5
TRANSFORMER_EPOCHS = 3


@dataclass
class TransformerJob(RunPlan):
    corpora: list[str]
    base: str  # a local model folder, or a hub id where a hub is reachable
    data_dir: str | None = None
    output: str = default("output")
    dropout: float = 0.1  # not the BiLSTM's 0.5: a pretrained encoder's fine-tuning dropout
    training: TrainingOptions = field(default_factory=lambda: TrainingOptions(
        epochs=TRANSFORMER_EPOCHS, learning_rate=TRANSFORMER_LEARNING_RATE))

    def __post_init__(self) -> None:
        if not self.corpora:
            raise FieldError("corpora", None, "no corpus given")
        if not self.base:
            raise FieldError("base", None, "give the encoder to fine-tune (a model folder or hub id)")
        check_fields(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TransformerJob":
        """The job a checkpoint keeps (`asdict` of it), for `--resume`."""
        return cls(**{**data, "training": TrainingOptions(**data["training"])})

    def params(self) -> dict[str, Any]:
        return {"kind": "transformer", "corpora": ",".join(self.corpora), "base": self.base,
                "data_dir": str(Path(self.data_dir).resolve()) if self.data_dir else "",
                "train_splits": ",".join(self.train_splits), "eval_split": self.eval_split, "output": self.output,
                "dropout": self.dropout, "sampling": self.sampling, "optimizer_state": self.optimizer_state,
                "device": self.device, "word_output": WORD_OUTPUT, **asdict(self.training)}


def predict_transformer_tags(model: TransformerTagger, dataset: SubwordDataset, tags: Sequence[str], task: str,
                             device: torch.device, precision: str = "fp32",
                             batch_tokens: int = PREDICT_BATCH_TOKENS) -> list[list[str]]:
    """Tag strings for every sentence, in dataset order, in batches of at most `batch_tokens` padded words."""
    return decode_in_batches(model, dataset, tags, task, device, precision, batch_tokens)


def per_corpus_metrics(split: str, scores: dict[str, EntityScores]) -> dict[str, float]:
    """`metric_names`, with the per-corpus names (`<corpus>/test_f1`) even for one corpus."""
    metrics = metric_names(split, scores)
    for task, task_scores in scores.items():
        metrics.update({corpus_metric(name, task): value for name, value in task_scores.as_metrics(split).items()})
    return metrics


def encode_splits(model: TransformerTagger, data: Any, splits: Sequence[str], tags: list[str]) -> SubwordDataset:
    """The sentences of a corpus's `splits` (kd.training.job_definition.TaskData), encoded; a sentence too long
    for the encoder is named by its split's file and its number there."""
    try:
        return model.encode(data.sentences(splits), tags)
    except SentenceTooLong as error:
        index = error.index
        for split in splits:
            if index < len(data.splits[split]):
                raise SentenceTooLong(index, error.words, error.limit, split_path(data.directory, split)) from None
            index -= len(data.splits[split])
        raise


def run_transformer_job(job: TransformerJob | None, client, checkpoint_dir: Path, *,
                        hooks: TrainingHooks | None = None, resume_run_id: str | None = None,
                        attach_to: str | None = None) -> RunSummary:
    """Fine-tunes, evaluates and logs one transformer teacher; its logged model `model` (MLflow pyfunc,
    as a BiLSTM's) holds the folder of kd.models.transformer.save_transformer (safetensors, JSON,
    tokenizer files). Devel selection and the final scores are the BiLSTM assembly's
    (kd.training.assemble). A checkpoint under `checkpoint_dir` after every epoch lets
    `resume_run_id` continue a stopped run with the options it was started with (`job` is then
    ignored), as tagger_job's runs do. `hooks` hear the run id as soon as the run exists, every
    batch and every epoch."""
    hooks = hooks or TrainingHooks()
    job, run, state, checkpoint = job_to_run(client, job, resume_run_id, TransformerJob.from_dict)
    device = resolve_device(job.device)
    tasks = load_job_tasks(job)
    held_out_devel, splits = scored_splits(job, tasks)
    tags = {name: tag_list(data.sentences(job.train_splits)) for name, data in tasks.items()}
    model = build_transformer(job.base, {name: len(t) for name, t in tags.items()}, job.output, job.dropout,
                              job.training.seed).to(device)
    train_data = {name: encode_splits(model, data, job.train_splits, tags[name]) for name, data in tasks.items()}
    evaluators = {split: Evaluator(lambda task, dataset: predict_transformer_tags(
        model, dataset, tags[task], task, device, job.training.precision),
        {name: encode_splits(model, data, [split], tags[name]) for name, data in tasks.items()}) for split in splits}
    if state is None:
        run, checkpoint = start_transformer_run(job, client, list(tasks), checkpoint_dir, attach_to)
        state = TrainingState(job=asdict(job))
        state.save(checkpoint)  # a run killed in its first epoch resumes from scratch
    else:
        run.take_over()  # only now that its checkpoint, data and model are read
    hooks.on_start(run.run_id)
    with run_status(run):
        run.log_metrics({"num_parameters": float(model.num_parameters()), "model_bytes": float(model_bytes(model)),
                         "train_tokens": float(sum(d.num_tokens for d in train_data.values()))})
        trainable = Trainable(model, task_optimizers(model, job.training.learning_rate, job.optimizer_state),
                              alternating_plan(train_data, job.training.batch_size, job.sampling), supervised_loss(model))
        result = train(trainable, job.training, device, **devel_selection(evaluators, held_out_devel),
                       checkpoint_path=checkpoint, state=state, hooks=HookChain(EpochLog(run), hooks))
        final, results = score_splits(evaluators, result.state, per_corpus_metrics, timed_split=job.eval_split)
        run.log_metrics(final, step=result.state.epoch)
        run.set_tags({DESCRIPTION_TAG: headline(final)})
        log_final_artifacts(run, lambda staging: log_tagger_model(run, save_transformer(model, tags, staging / "model")),
                            asdict(job), evaluators, results)
    checkpoint.unlink(missing_ok=True)
    client.delete_tag(run.run_id, "checkpoint")
    return RunSummary(run_id=run.run_id, metrics=final)


def start_transformer_run(job: TransformerJob, client, tasks: list[str], checkpoint_dir: Path,
                          attach_to: str | None) -> tuple[TrackedRun, Path]:
    """A new run of the job, tagged like the MTM, its params logged and its checkpoint path tagged."""
    identity = identity_tags(transformer_definition(job))
    run = TrackedRun.start(client, job.experiment, job.run_name or default_run_name(
        identity["model_name"], tasks, job.training.seed), {
        "task": ",".join(tasks), "model_kind": "mtm", "teacher_kind": "transformer", "output": job.output,
        "seed": job.training.seed, "word_output": WORD_OUTPUT, "git_commit": git_commit(), **identity},
        attach_to=attach_to)
    run.log_params(job.params())
    checkpoint = checkpoint_file(checkpoint_dir, run.run_id).resolve()
    run.set_tags({"checkpoint": str(checkpoint)})
    return run, checkpoint
