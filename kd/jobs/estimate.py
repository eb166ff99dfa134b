"""What `kd plan show` prints: the cells per kind, the tokens they train on, and a cost estimate
from a measured throughput (the experiment's own finished runs when there are some, else the
figure bench/README.md measured) plus a start-up per cell (reading and sampling data, building the
model, evaluating, logging it: the tiny plan of issue 26 took 324 s where training alone was
estimated at 72 s). Corpora not downloaded yet count as unknown. Transformer teachers are counted apart: their speed depends on
the encoder (bench/README.md measured only MiniLM-L6), so without a finished transformer run in the
experiment their cost is reported as unknown and left out of the estimate, never guessed."""
from __future__ import annotations

import statistics
from pathlib import Path
from dataclasses import dataclass, field

from kd.jobs.plan_data import token_counts
from kd.jobs.plan_text import text_tokens
from kd.jobs.driver import ResolvedPlan
from kd.jobs.plan_runs import search_all

# bench/README.md "Distillation": an STM epoch of NCBI-disease train+devel (159,670 tokens) took 18.2 s
# with 2 threads at the default sizes; a cached student 1.04x that; caching took 8.1 s for those tokens.
DEFAULT_TRAIN_TOKENS_PER_SECOND = 159_670 / 18.2
DEFAULT_CACHE_TOKENS_PER_SECOND = 159_670 / 8.1
# Per cell besides its training tokens: issue 26's tiny plan (information2023-cpu.yaml, 2 corpora, 2
# seeds, 2 epochs: 25 cells) took 324 s on 2 cores where its tokens alone were estimated at 72 s:
# (324 - 72) / 25 = 10 s a cell.
DEFAULT_CELL_SECONDS = 10.0
FINISHED = "attributes.status = 'FINISHED'"
TRANSFORMER = "tags.teacher_kind = 'transformer' and tags.model_kind = 'mtm'"  # a cache run has the tag too


@dataclass
class TransformerCost:
    """The transformer teachers' share of a plan, apart from the BiLSTM cells'."""

    epoch_tokens: int = 0  # tokens x epochs of every transformer teacher cell
    cache_tokens: int = 0  # tokens cached through a transformer teacher
    train_tokens_per_second: float | None = None  # measured; None: unknown
    predict_tokens_per_second: float | None = None
    source: str = ""

    @property
    def known(self) -> bool:
        return self.train_tokens_per_second is not None and self.predict_tokens_per_second is not None

    @property
    def seconds(self) -> float:
        if not self.known:
            return 0.0
        return self.epoch_tokens / self.train_tokens_per_second + self.cache_tokens / self.predict_tokens_per_second


@dataclass
class Estimate:
    cells: dict[str, int]  # per kind
    tokens: dict[str, int]  # 'corpus (splits)': the tokens cells train on (after subsampling)
    epoch_tokens: int  # tokens x epochs over every BiLSTM training cell
    cache_tokens: int  # tokens cached through BiLSTM teachers
    tokens_per_second: float
    source: str  # where the throughput came from
    seconds: float  # one worker's time for the whole plan (without transformer teachers of unknown cost)
    transformer: TransformerCost
    cell_seconds: float = 0.0  # per cell besides its training tokens (start-up, evaluation, logging)
    unknown: list[str] = field(default_factory=list)  # corpora not found: their tokens are not counted


def _training_time(run) -> tuple[float, float] | None:
    """(tokens x epochs, seconds) of a finished training run, None without them."""
    metrics = run.data.metrics
    if not {"train_tokens", "epochs_trained"} <= set(metrics) or not run.info.end_time \
            or run.info.end_time <= run.info.start_time:
        return None
    return metrics["train_tokens"] * metrics["epochs_trained"], (run.info.end_time - run.info.start_time) / 1000


def _training_rate(run) -> float | None:
    measured = _training_time(run)
    return None if measured is None else measured[0] / measured[1]


def measured_throughput(client, experiment: str | None) -> tuple[float, float, str]:
    """(tokens per second of training, seconds per cell besides training, where they came from).
    From the experiment's finished BiLSTM tagger runs: a least-squares line of run time over tokens x
    epochs (its slope the rate, its intercept the start-up) where 3+ runs differ in size and the line
    can be true, else the median rate with the default start-up; without runs, the defaults."""
    runs = search_all(client, experiment, FINISHED) if experiment else []
    points = [(work, seconds) for run in runs if run.data.tags.get("teacher_kind") != "transformer"  # apart
              and (measured := _training_time(run)) is not None for work, seconds in [measured]]
    fitted = _fit(points)
    if fitted is not None:
        return fitted[0], fitted[1], f"fit over {len(points)} finished runs in {experiment}"
    if points:
        rate = statistics.median(work / seconds for work, seconds in points)
        return rate, DEFAULT_CELL_SECONDS, f"median of {len(points)} finished runs in {experiment}"
    return DEFAULT_TRAIN_TOKENS_PER_SECOND, DEFAULT_CELL_SECONDS, "bench/README.md (STM, default sizes, 2 threads)"


def _fit(points: list[tuple[float, float]]) -> tuple[float, float] | None:
    """(rate, start-up) of the line through the runs, None where it cannot be true: sizes within 2x
    of each other, or a line with a negative start-up or a rate below the slowest run's own (start-up
    included). Fourteen STMs of 246k-310k token-epochs that took 68-160 s on a shared machine fitted
    81 tokens/s and no start-up (each had trained at 1.7k-4k tokens/s): their times were load, not size."""
    works = [work for work, _ in points]
    if len(points) < 3 or max(works) < 2 * min(works):
        return None
    slope, intercept = statistics.linear_regression(works, [seconds for _, seconds in points])
    if slope <= 0 or intercept < 0 or 1 / slope < min(work / seconds for work, seconds in points):
        return None
    return 1 / slope, intercept


def measured_transformer_rates(client, experiment: str | None) -> tuple[float | None, float | None, str]:
    """Median training and prediction tokens per second of the experiment's finished transformer
    teacher runs (whatever their base), or None and why."""
    runs = search_all(client, experiment, f"{FINISHED} and {TRANSFORMER}") if experiment else []
    train = [rate for run in runs if (rate := _training_rate(run)) is not None]
    predict = [run.data.metrics["predict_tokens_per_second"] for run in runs
               if "predict_tokens_per_second" in run.data.metrics]
    if train and predict:
        return (statistics.median(train), statistics.median(predict),
                f"median of {len(train)} finished transformer runs in {experiment}")
    where = f"in {experiment}" if experiment else "to measure: give --experiment with one"
    return None, None, f"no finished transformer teacher run {where}"


def estimate(resolved: ResolvedPlan, client, experiment: str | None) -> Estimate:
    cells = list(resolved.cells.values())
    tokens: dict[tuple[str, tuple[str, ...]], int] = {}

    unknown: set[str] = set()

    def corpus_tokens(corpus: str, splits: list[str]) -> int:
        if corpus in resolved.data.missing:
            unknown.add(corpus)
            return 0
        key = (corpus, tuple(splits))
        if key not in tokens:
            tokens[key] = token_counts(resolved.data.data_dir, corpus, [s for s in splits
                                                                        if s in resolved.data.splits[corpus]])
        return tokens[key]

    epoch_tokens = cache_tokens = 0
    per_corpus: dict[str, int] = {}
    transformer = TransformerCost()
    texts: dict[str, int] = {}  # text cell (or a user's file) -> its tokens
    for cell in cells:
        config = cell.config
        if config["job"] == "text":
            texts[cell.cell_id] = per_corpus[f"unlabelled {cell.label}"] = 0 if set(config["sources"].values()) & {
                "unknown", "not-downloaded"} else text_tokens(cell, resolved.data.data_dir)
            continue
        text = _text_of(cell, texts, resolved)
        if config["job"] != "cache":  # a study: its trials' students
            labelled = sum(corpus_tokens(c, config["train_splits"]) for c in config["corpora"])
            ratio = {**(config.get("distill") or {}), **config.get("fixed", {})}.get("unlabelled_ratio")
            count = config.get("trials", 1) * config["training"]["epochs"] * (
                labelled + (min(text, round(ratio * labelled)) if ratio else text))
            if config["job"] == "transformer":
                transformer.epoch_tokens += count
            else:
                epoch_tokens += count
            continue
        per_source = sum(corpus_tokens(c, config["splits"]) for c in config["tasks"]) + text * len(config["tasks"])
        through_transformer = sum(resolved.cells[s].config["job"] == "transformer" for s in cell.depends_on)
        teachers = sum(resolved.cells[s].kind != "text" for s in cell.depends_on)
        transformer.cache_tokens += through_transformer * per_source
        cache_tokens += (teachers - through_transformer) * per_source
    rate, cell_seconds, source = measured_throughput(client, experiment)
    if transformer.epoch_tokens:
        (transformer.train_tokens_per_second, transformer.predict_tokens_per_second,
         transformer.source) = measured_transformer_rates(client, experiment)
    per_corpus.update({key: count for key, count in texts.items() if key.startswith("unlabelled file ")})
    per_corpus.update({f"{corpus} ({'+'.join(splits)})": count for (corpus, splits), count in sorted(tokens.items())})
    return Estimate(cells={k: sum(c.kind == k for c in cells) for k in ("text", "teacher", "cache", "study", "model")},
                    tokens=per_corpus, epoch_tokens=epoch_tokens, cache_tokens=cache_tokens, tokens_per_second=rate,
                    source=source, transformer=transformer,
                    cell_seconds=cell_seconds, unknown=sorted(unknown),
                    seconds=epoch_tokens / rate + cache_tokens / DEFAULT_CACHE_TOKENS_PER_SECOND + transformer.seconds
                    + sum(c.config.get("trials", 1) for c in cells) * cell_seconds)  # a study: a start-up a trial


def _text_of(cell, texts: dict[str, int], resolved: ResolvedPlan) -> int:
    """Tokens of the unlabelled text a cache caches or a student learns from (0: none)."""
    text = cell.config.get("unlabelled")
    if not text:
        return 0
    if text.get("cell"):
        return texts.get(cell.depends_on[-1], 0)
    key = "unlabelled file " + Path(dict(cell.paths)["unlabelled"]).name
    if key not in texts:
        texts[key] = text_tokens(cell, resolved.data.data_dir)
    return texts[key]
