"""A plan as a graph of cells: a teacher of a seed, a cache (of a seed, or of every seed for an
ensemble), a model on a corpus and seed. A cell's identity is a hash of its resolved configuration
(every option with kd's defaults filled in, and the digests of the corpora it reads) and of the
identities of the cells it depends on: the same cell in two plans, or in one plan run twice, is the
same cell, and changing anything it depends on makes it another."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from kd.cache.store import LAYERS
from kd.data.types import SPLITS
from kd.errors import KdError
from kd.jobs.plan import DISTILL_KEYS, MODEL_KEYS, SCHEDULE_KEYS, SPLIT_KEYS, TRAINING_KEYS, ModelSpec, Plan
from kd.jobs.plan_text import TextSpec, text_config
from kd.jobs.teacher_spec import TeacherSpec, transformer_job_options
from kd.losses.distill import get_loss
from kd.training.distillation import DistillOptions
from kd.models.tagger import TaggerConfig
from kd.option_schema import default
from kd.training.job_definition import TaggerJob
from kd.training.loop import TrainingOptions
from kd.training.transformer_job import TransformerJob


SEEDLESS = ("text", "study")  # a text, and a tuned model's study (its first seed's cache), are of no seed


@dataclass(frozen=True)
class Cell:
    cell_id: str
    kind: str  # teacher, cache or model
    name: str  # of the teacher, cache or model in the plan
    corpus: str | None  # a model's corpus; a cache's when its teachers are single-corpus models
    seed: int | None  # None: a cache over the teachers of every seed
    config: dict[str, Any]  # the resolved job, without run ids, experiment or paths
    depends_on: tuple[str, ...] = ()  # cell ids, in the order the job uses their runs
    # A transformer teacher's encoder, a folder or hub id: where it is, not what it is (the config's
    # `base` is), so not part of the identity.
    base: str | None = None
    # Likewise where its inputs lie: a text cell's unsampled corpora, a user's text file.
    paths: tuple[tuple[str, str], ...] = ()

    @property
    def label(self) -> str:
        seed = None if self.kind in SEEDLESS else "seeds" if self.seed is None else f"seed{self.seed}"
        parts = [self.kind, self.name, self.corpus, seed]
        return "/".join(p for p in parts if p)

    @property
    def run_name(self) -> str:
        """The run's name in MLflow: what tells the plan's runs apart first (`SM_alpha0 s1 NCBI-disease`,
        `mtm teacher s1`, `mtm cache all seeds`; the runs list cut `model/SM_alpha0/NCBI-...` before the
        corpus and seed)."""
        kind = None if self.kind == "model" else self.kind  # a teacher and its cache may share a name
        # The seed before the corpus: the list shows about 20 characters, and a long corpus name
        # (BioNLP13PC, BioNLP13CG) is told apart by its start as much as by its end.
        seed = None if self.kind in SEEDLESS else "all seeds" if self.seed is None else f"s{self.seed}"
        parts = [self.name, kind, seed, self.corpus]
        return " ".join(p for p in parts if p)


def identity(config: dict[str, Any], depends_on: tuple[str, ...]) -> str:
    text = json.dumps({"config": config, "depends_on": list(depends_on)}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def tagger_config(corpora: list[str], options: dict[str, Any], seed: int, digests: dict[str, str],
                  distill: dict[str, Any] | None = None) -> dict[str, Any]:
    """A TaggerJob's options, every default filled in, as a cell stores them."""
    model = TaggerConfig(**{k: v for k, v in options.items() if k in MODEL_KEYS}).options()
    training = dataclasses.asdict(TrainingOptions(seed=seed, **{k: v for k, v in options.items() if k in TRAINING_KEYS}))
    return {"job": "tagger", "corpora": list(corpora), "model": model, "training": training,
            **{k: options.get(k, default(k)) for k in (*SPLIT_KEYS, *SCHEDULE_KEYS)},
            "distill": distill, "data": {c: digests[c] for c in corpora}}


def tagger_job(config: dict[str, Any], *, data_dir: str | None, experiment: str, run_name: str | None, device: str,
               cache_run: str | None, unlabelled: str | None = None) -> TaggerJob:
    """The TaggerJob of a tagger cell, with its cache's run id (and its text file) for a student."""
    distill = None
    if config["distill"] is not None:
        text = {"unlabelled": unlabelled, "unlabelled_recipe": config["unlabelled"]["recipe"]} if unlabelled else {}
        distill = DistillOptions(**config["distill"], cache_run=cache_run, **text)
    return TaggerJob(corpora=list(config["corpora"]), data_dir=data_dir, model=TaggerConfig(**config["model"]),
                     training=TrainingOptions(**config["training"]), **run_plan(config), device=device,
                     experiment=experiment, run_name=run_name, distill=distill)


def transformer_config(spec: TeacherSpec, corpora: list[str], seed: int, digests: dict[str, str]) -> dict[str, Any]:
    """A TransformerJob's options, every default filled in, as a cell stores them."""
    job = TransformerJob(corpora=list(corpora), base=spec.base or "", **transformer_job_options(spec.options, seed))
    return {"job": "transformer", "corpora": list(corpora), "base": dict(spec.base_identity or {}),
            "output": job.output, "dropout": job.dropout, "training": dataclasses.asdict(job.training),
            **run_plan(dataclasses.asdict(job)), "data": {c: digests[c] for c in corpora}}


def transformer_job(config: dict[str, Any], base: str, *, data_dir: str | None, experiment: str,
                    run_name: str | None, device: str) -> TransformerJob:
    """The TransformerJob of a transformer teacher cell (`base`: the cell's encoder folder or hub id)."""
    return TransformerJob(corpora=list(config["corpora"]), base=base, data_dir=data_dir, output=config["output"],
                          dropout=config["dropout"], training=TrainingOptions(**config["training"]), **run_plan(config),
                          device=device, experiment=experiment, run_name=run_name)


def run_plan(config: dict[str, Any]) -> dict[str, Any]:
    """The splits and schedule of a job or a cell's configuration."""
    return {k: list(config[k]) if k == "train_splits" else config[k] for k in (*SPLIT_KEYS, *SCHEDULE_KEYS)}


def distill_config(options: dict[str, Any]) -> dict[str, Any]:
    """A student's loss and weights, every default filled in (beta's default stays None)."""
    return {k: options.get(k, default(k)) for k in DISTILL_KEYS}


class CellGraph:
    """Expands a plan into cells, each made once however many models or caches use it."""

    def __init__(self, plan: Plan, digests: dict[str, str], sources: dict[str, tuple[str, str]] | None = None) -> None:
        self.plan, self.digests = plan, digests
        self.sources = sources or {}  # corpus -> (unsampled folder, digest): what text cells read
        self.cells: dict[str, Cell] = {}  # in dependency order: a cell after the cells it uses
        self.made: dict[tuple, Cell] = {}
        self.cache_users = self._cache_users()

    def _add(self, key: tuple, kind: str, name: str, corpus: str | None, seed: int | None, config: dict[str, Any],
             depends_on: tuple[Cell, ...] = (), **where: Any) -> Cell:
        """`where`: the cell's `base` and `paths` (where its inputs lie, not part of its identity)."""
        ids = tuple(c.cell_id for c in depends_on)
        cell = Cell(cell_id=identity(config, ids), kind=kind, name=name, corpus=corpus, seed=seed, config=config,
                    depends_on=ids, **where)
        self.made[key] = self.cells.setdefault(cell.cell_id, cell)
        return self.made[key]

    def teacher_corpora(self, name: str) -> list[str]:
        return list(self.plan.teachers[name].corpora or self.plan.corpora)

    def teacher(self, name: str, seed: int) -> Cell:
        key = ("teacher", name, seed)
        if key not in self.made:
            spec = self.plan.teachers[name]
            corpora = self.teacher_corpora(name)
            if spec.kind == "bilstm" and len(corpora) < 2:
                raise KdError(f"teachers.{name}: a multi-task teacher needs at least two corpora; the plan has "
                              f"{', '.join(corpora)}")
            if spec.kind == "transformer":
                self._add(key, "teacher", name, None, seed, transformer_config(spec, corpora, seed, self.digests),
                          base=spec.base)
            else:
                self._add(key, "teacher", name, None, seed, tagger_config(corpora, spec.options, seed, self.digests))
        return self.made[key]

    def model(self, spec: ModelSpec, corpus: str, seed: int) -> Cell:
        key = ("model", spec.name, corpus, seed)
        if key in self.made:
            return self.made[key]
        if spec.kind == "stm":
            return self._add(key, "model", spec.name, corpus, seed,
                             tagger_config([corpus], spec.options, seed, self.digests))
        if spec.kind == "tuned":
            return self.tuned(spec, corpus, seed)
        cache = self.cache(spec.cache, corpus, seed, f"models.{spec.name}")
        config = tagger_config([corpus], spec.options, seed, self.digests, distill_config(spec.options))
        if spec.unlabelled is None:
            return self._add(key, "model", spec.name, corpus, seed, config, (cache,))
        text, config["unlabelled"], paths = self.text(spec.unlabelled, corpus, self.plan.caches[spec.cache].name)
        return self._add(key, "model", spec.name, corpus, seed, config, (cache, *text), paths=paths)

    def tuned(self, spec: ModelSpec, corpus: str, seed: int) -> Cell:
        """A tuned model's refit of `seed`, after its study on the corpus (kd.jobs.plan_tuned)."""
        from kd.jobs.plan_tuned import refit_config, study_config

        first = self.plan.seeds[0]
        tuning = {**spec.tuning, "epochs": spec.options.get("epochs", spec.tuning["epochs"])}  # --epochs N
        paths: tuple = (("space", spec.tuning["space"]),)

        def with_text(config: dict[str, Any], cache: Cell) -> tuple[Cell, ...]:
            if spec.unlabelled is None:
                return (cache,)
            text, config["unlabelled"], where = self.text(spec.unlabelled, corpus, spec.cache)
            nonlocal paths
            paths = (("space", spec.tuning["space"]), *where)
            return (cache, *text)

        key = ("study", spec.name, corpus)
        if key not in self.made:
            config = study_config(tuning, corpus, first, self.digests[corpus])
            inputs = with_text(config, self.cache(spec.cache, corpus, first, f"models.{spec.name}"))
            self._add(key, "study", spec.name, corpus, None, config, inputs, paths=paths)
        config = refit_config(tuning, corpus, seed, self.digests[corpus])
        inputs = with_text(config, self.cache(spec.cache, corpus, seed, f"models.{spec.name}"))
        return self._add(("model", spec.name, corpus, seed), "model", spec.name, corpus, seed, config,
                         (self.made[key], *inputs), paths=paths)

    def text(self, spec: TextSpec, corpus: str, cache: str) -> tuple[tuple[Cell, ...], dict[str, Any], tuple]:
        """A cache's or a student's text: (the text cell it needs, if any; its entry in the user's
        configuration; where a user's file lies)."""
        from kd.data.text.builder import file_sha256

        if spec.file:
            return (), {"recipe": spec.recipe_text(), "file": file_sha256(spec.file)}, (("unlabelled", spec.file),)
        if spec.rest_of_train and "train" not in self.plan.subsample:
            raise KdError(f"caches.{cache}.unlabelled.rest_of_train: the plan trains on the whole training split, "
                          "so none is left (sample it: subsample: {train: N}, or --max-train-sentences N)")
        tasks = [corpus] if spec.rest_of_train else self.cache_tasks(cache, corpus)
        # One text per corpus (its rest), else one per set of corpora whose evaluation splits it leaves out.
        key = ("text", cache, corpus if spec.rest_of_train else None, tuple(tasks))
        if key not in self.made:
            config = text_config(spec, corpus if spec.rest_of_train else None, tasks, self.digests,
                                 {c: digest for c, (_, digest) in self.sources.items()})
            read = [*spec.from_corpora, *([corpus] if spec.rest_of_train else [])]
            paths = tuple((c, self.sources[c][0]) for c in read if c in self.sources)
            self._add(key, "text", cache, corpus if tasks == [corpus] else None, None, config, paths=paths)
        return (self.made[key],), {"recipe": spec.recipe_text(), "cell": True}, ()

    def cache_tasks(self, name: str, corpus: str) -> list[str]:
        """The corpora a cache holds: its teachers' (a single-corpus teacher's: `corpus`)."""
        spec = self.plan.caches[name]
        return self.teacher_corpora(spec.teachers[0]) if spec.teachers[0] in self.plan.teachers else [corpus]

    def cache(self, name: str, corpus: str, seed: int, user: str) -> Cell:
        spec = self.plan.caches[name]
        per_corpus = any(source in self.plan.models for source in spec.teachers) or bool(
            spec.unlabelled and spec.unlabelled.rest_of_train)  # each corpus's own text
        cache_seed = seed if spec.ensemble == "seed" else None
        key = ("cache", name, corpus if per_corpus else None, cache_seed)
        if key in self.made:
            return self.made[key]
        seeds = [seed] if cache_seed is not None else list(self.plan.seeds)
        if any(source in self.plan.models for source in spec.teachers):
            sources = tuple(self.model(self.plan.models[s], corpus, sd) for sd in seeds for s in spec.teachers)
            tasks = [corpus]
        else:
            tasks = self.teacher_corpora(spec.teachers[0])
            if any(self.teacher_corpora(t) != tasks for t in spec.teachers):
                raise KdError(f"caches.{name}: its teachers cover different corpora")
            sources = tuple(self.teacher(t, sd) for sd in seeds for t in spec.teachers)
        if corpus not in tasks:
            raise KdError(f"{user}: corpus {corpus} is not among the corpora of cache {name} ({', '.join(tasks)})")
        splits, layers = self.cache_users[name]
        if per_corpus:
            tasks = [corpus]
        config = {"job": "cache", "tasks": tasks, "splits": splits, "layers": list(spec.layers) or layers,
                  "dtype": spec.dtype, "data": {c: self.digests[c] for c in tasks}}
        paths: tuple = ()
        if spec.unlabelled is not None:
            text, config["unlabelled"], paths = self.text(spec.unlabelled, corpus, name)
            sources = (*sources, *text)
        return self._add(key, "cache", name, corpus if per_corpus else None, cache_seed, config, sources, paths=paths)

    def columns(self, table: str) -> dict[str, list[Cell]]:
        """Model -> the cells whose runs make its column in `table` (a teacher column: its teacher's)."""
        columns: dict[str, list[Cell]] = {}
        for name in self.plan.tables[table].models:
            spec = self.plan.models[name]
            if spec.kind == "teacher":
                columns[name] = [self.made[("teacher", spec.teacher, seed)] for seed in self.plan.seeds]
            else:
                columns[name] = [self.made[("model", name, corpus, seed)]
                                 for corpus in self.plan.corpora for seed in self.plan.seeds]
        return columns

    def _cache_users(self) -> dict[str, tuple[list[str], list[str]]]:
        """Per cache: the splits its students train on and the layers their losses read."""
        found: dict[str, tuple[set[str], set[str]]] = {name: (set(), set()) for name in self.plan.caches}
        for model in self.plan.models.values():
            if model.cache:
                splits, layers = found[model.cache]
                splits.update(model.options.get("train_splits", ["train", "devel"]))
                layers.update(get_loss(model.options.get("loss", DistillOptions.loss)).layers)
        return {name: ([s for s in SPLITS if s in splits], [l for l in LAYERS if l in layers])
                for name, (splits, layers) in found.items()}


def expand(plan: Plan, digests: dict[str, str], sources: dict[str, tuple[str, str]] | None = None) -> CellGraph:
    """The cells every table of the plan needs (`graph.cells`, a cell after those it uses);
    `sources`: corpus -> (unsampled folder, digest) of the corpora text cells read."""
    graph = CellGraph(plan, digests, sources)
    for table in plan.tables.values():
        for seed in plan.seeds:
            for name in table.models:
                spec = plan.models[name]
                if spec.kind == "teacher":
                    graph.teacher(spec.teacher, seed)
                    continue
                for corpus in plan.corpora:
                    graph.model(spec, corpus, seed)
    return graph
