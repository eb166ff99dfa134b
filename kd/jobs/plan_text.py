"""Transfer text in plans: `unlabelled:` on a cache (the text it caches the teachers' outputs of)
and on a student (the text it learns from, its cache's):

    caches:
      mtm-own: {teachers: [mtm], unlabelled: {rest_of_train: true, max_sentences: 2000, seed: 1}}
      mtm-pub: {teachers: [mtm], unlabelled: {from_corpora: [BC2GM], max_sentences: 5000}}
      mtm-file: {teachers: [mtm], unlabelled: texts/pubmed.txt}   # relative to the plan file
    models:
      SMU: {kind: student, cache: mtm-own, unlabelled: true, unlabelled_ratio: 2}

A specification is built by a `text` cell of its own with `kd data text`'s library
(kd.data.text.builder): `from_corpora` reads those corpora's whole training splits (from the plan's
data folder, never subsampled); `rest_of_train` reads each plan corpus's own training split less
the sentences the plan trains on (with `subsample: {train: N}`, the rest of the split), which makes
the cache one per corpus. Both remove every sentence of the cached corpora's devel and test splits
and duplicates, then sample `max_sentences` with `seed`. A text cell's identity is its
specification and the digests of the corpora it reads; a student's model identity is the
specification (one model across corpora), the text's digest a tag of its run."""
from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kd.errors import FieldError
from kd.jobs.plan_file import PlanFile, as_mapping, as_names, check_known, is_int

TEXT_KEYS = ("from_corpora", "rest_of_train", "max_sentences", "seed")
TEXT_ARTIFACT = "text"
TEXT_FILE = "transfer.txt"


@dataclass(frozen=True)
class TextSpec:
    file: str | None = None  # a file given by the user (absolute)
    from_corpora: tuple[str, ...] = ()
    rest_of_train: bool = False
    max_sentences: int | None = None
    seed: int = 1

    def recipe(self) -> dict[str, Any]:
        return {"from_corpora": list(self.from_corpora), "rest_of_train": self.rest_of_train,
                "max_sentences": self.max_sentences, "seed": self.seed}

    def recipe_text(self) -> str:
        """A student's model identity: the recipe, or "file"."""
        return "file" if self.file else json.dumps(self.recipe(), sort_keys=True, separators=(",", ":"))


def parse_text(source: PlanFile, key: tuple, value: Any) -> TextSpec:
    """A file path (relative to the plan) or a text specification."""
    if isinstance(value, str) and value:
        path = (source.path.parent / value).resolve()
        if not path.is_file():
            raise source.error(key, f"{value!r}: no such file (relative to the plan)")
        return TextSpec(file=str(path))
    spec = as_mapping(source, key, value)
    check_known(source, key, spec, TEXT_KEYS)
    corpora = tuple(as_names(source, key + ("from_corpora",), spec["from_corpora"])) if "from_corpora" in spec else ()
    rest = spec.get("rest_of_train", False)
    if not isinstance(rest, bool):
        raise source.error(key + ("rest_of_train",), f"{rest!r}: expected true or false")
    if not corpora and not rest:
        raise source.error(key, "expected a file, or a specification with from_corpora or rest_of_train: true")
    cap, seed = spec.get("max_sentences"), spec.get("seed", 1)
    if cap is not None and (not is_int(cap) or cap < 1):
        raise source.error(key + ("max_sentences",), f"{cap!r}: expected a number of sentences of at least 1")
    if not is_int(seed):
        raise source.error(key + ("seed",), f"{seed!r}: expected an integer")
    return TextSpec(from_corpora=corpora, rest_of_train=rest, max_sentences=cap, seed=seed)


def text_config(spec: TextSpec, corpus: str | None, tasks: list[str], digests: dict[str, str],
                source_digests: dict[str, str]) -> dict[str, Any]:
    """A text cell's configuration: the recipe, the corpus whose rest it reads, the corpora whose
    evaluation splits it leaves out, and the digests of all of them."""
    read = [*spec.from_corpora, *([corpus] if corpus else [])]
    return {"job": "text", "recipe": spec.recipe(), "corpus": corpus, "tasks": list(tasks),
            "data": {c: digests[c] for c in tasks}, "sources": {c: source_digests.get(c, "unknown") for c in read}}


def build_text_cell(config: dict[str, Any], sources: dict[str, str], data_dir: str, run) -> None:
    """Builds a text cell's text (`sources`: corpus -> its unsampled folder) and logs it and its
    manifest under the run's `text` artifacts."""
    from kd.data.corpora import find_local_corpus
    from kd.data.text.builder import TextJob, build_text

    recipe = config["recipe"]
    tasks = [find_local_corpus(t, Path(data_dir)) for t in config["tasks"]]
    read = [Path(sources[c]) for c in [*recipe["from_corpora"], *([config["corpus"]] if config["corpus"] else [])]]
    labelled = [find_local_corpus(config["corpus"], Path(data_dir))] if config["corpus"] else []
    with tempfile.TemporaryDirectory(prefix="kd-text-") as folder:
        out = Path(folder) / TEXT_FILE
        job = TextJob(from_corpora=read, for_corpora=[*tasks, *read], out=out, exclude_train_of=labelled,
                      max_sentences=recipe["max_sentences"], seed=recipe["seed"])
        manifest = build_text(job)
        if not manifest["sentences"]:
            raise FieldError("unlabelled", config["recipe"], "the text has no sentence left")
        run.log_metrics({"text_sentences": float(manifest["sentences"]), "text_tokens": float(manifest["tokens"])})
        run.log_artifact(out, TEXT_ARTIFACT)
        run.log_artifact(Path(f"{out}.manifest.json"), TEXT_ARTIFACT)


def text_file(client, run_id: str, folder: str) -> str:
    """The text of a finished text cell's run, downloaded under `folder` (once per run)."""
    target = Path(folder) / "texts" / run_id
    path = target / TEXT_ARTIFACT / TEXT_FILE
    if not path.is_file():
        target.mkdir(parents=True, exist_ok=True)
        client.download_artifacts(run_id, TEXT_ARTIFACT, str(target))
    return str(path)


def text_tokens(cell, data_dir: Path) -> int:
    """About how many tokens a text cell's text will hold (for `kd plan show`): the training
    tokens it reads (less a corpus's labelled sample for `rest_of_train`), capped by
    `max_sentences` of the mean sentence length. A user's file: its tokens."""
    from kd.data.conll import read_unlabelled
    from kd.data.corpora import find_local_corpus, load_split

    if cell.kind != "text":
        return sum(len(s.tokens) for s in read_unlabelled(dict(cell.paths)["unlabelled"]))
    sentences = [s for _, folder in cell.paths for s in load_split(Path(folder), "train")]
    count, tokens = len(sentences), sum(len(s.tokens) for s in sentences)
    if cell.config["corpus"] and cell.config["corpus"] in dict(cell.paths):
        labelled = load_split(find_local_corpus(cell.config["corpus"], data_dir), "train")
        count, tokens = count - len(labelled), tokens - sum(len(s.tokens) for s in labelled)
    cap = cell.config["recipe"]["max_sentences"]
    if cap is not None and count > cap:
        tokens = round(tokens * cap / count)
    return max(tokens, 0)
