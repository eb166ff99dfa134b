"""What `kd plan show` prints: the cells per kind, the tokens they train on, and a cost estimate
from a measured throughput (the experiment's own finished runs when there are some, else the
figure bench/README.md measured)."""
from __future__ import annotations

import statistics
from dataclasses import dataclass

from kd.jobs.data import token_counts
from kd.jobs.driver import ResolvedPlan
from kd.jobs.tracking import search_all

# bench/README.md "Distillation": an STM epoch of NCBI-disease train+devel (159,670 tokens) took 18.2 s
# with 2 threads at the default sizes; a cached student 1.04x that; caching took 8.1 s for those tokens.
DEFAULT_TRAIN_TOKENS_PER_SECOND = 159_670 / 18.2
DEFAULT_CACHE_TOKENS_PER_SECOND = 159_670 / 8.1


@dataclass
class Estimate:
    cells: dict[str, int]  # per kind
    tokens: dict[str, int]  # 'corpus (splits)': the tokens cells train on (after subsampling)
    epoch_tokens: int  # tokens x epochs over every training cell
    cache_tokens: int
    tokens_per_second: float
    source: str  # where the throughput came from
    seconds: float  # one worker's time for the whole plan


def measured_throughput(client, experiment: str | None) -> tuple[float, str]:
    """Median tokens per second of training (tokens x epochs over wall time) of the experiment's
    finished tagger runs, or bench/README.md's figure without any."""
    runs = search_all(client, experiment, "attributes.status = 'FINISHED'") if experiment else []
    rates = [run.data.metrics["train_tokens"] * run.data.metrics["epochs_trained"]
             / ((run.info.end_time - run.info.start_time) / 1000)
             for run in runs if {"train_tokens", "epochs_trained"} <= set(run.data.metrics)
             and run.info.end_time and run.info.end_time > run.info.start_time]
    if rates:
        return statistics.median(rates), f"median of {len(rates)} finished runs in {experiment}"
    return DEFAULT_TRAIN_TOKENS_PER_SECOND, "bench/README.md (STM, default sizes, 2 threads)"


def estimate(resolved: ResolvedPlan, client, experiment: str | None) -> Estimate:
    cells = list(resolved.cells.values())
    tokens: dict[tuple[str, tuple[str, ...]], int] = {}

    def corpus_tokens(corpus: str, splits: list[str]) -> int:
        key = (corpus, tuple(splits))
        if key not in tokens:
            tokens[key] = token_counts(resolved.data.data_dir, corpus, [s for s in splits
                                                                        if s in resolved.data.splits[corpus]])
        return tokens[key]

    epoch_tokens = cache_tokens = 0
    for cell in cells:
        config = cell.config
        if config["job"] == "tagger":
            epoch_tokens += config["training"]["epochs"] * sum(corpus_tokens(c, config["train_splits"])
                                                               for c in config["corpora"])
        else:
            cache_tokens += len(cell.depends_on) * sum(corpus_tokens(c, config["splits"]) for c in config["tasks"])
    rate, source = measured_throughput(client, experiment)
    per_corpus = {f"{corpus} ({'+'.join(splits)})": count for (corpus, splits), count in sorted(tokens.items())}
    return Estimate(cells={k: sum(c.kind == k for c in cells) for k in ("teacher", "cache", "model")},
                    tokens=per_corpus, epoch_tokens=epoch_tokens, cache_tokens=cache_tokens, tokens_per_second=rate,
                    source=source, seconds=epoch_tokens / rate + cache_tokens / DEFAULT_CACHE_TOKENS_PER_SECOND)
