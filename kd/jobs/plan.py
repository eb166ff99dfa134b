"""Reading a plan file: YAML checked key by key, every error one line naming the file, the line and
the key (`experiments/x.yaml:12: models.SM.alpha: ...`), before anything runs.

    name: information2023-cpu          # optional (default: the file's stem)
    data_dir: ../shared/datasets       # optional, relative to the plan file (or --data-dir)
    corpora: [NCBI-disease, BC5CDR]
    seeds: [1, 2, 3]
    subsample: {train: 1000}           # optional: a deterministic sample of each split, per corpus
    defaults: {epochs: 10, train_splits: [train], word_dim: 100}
    teachers:                          # multi-task teachers (one per seed); corpora: default all
      mtm: {output: softmax, epochs: 20}
      bert: {kind: transformer, base: ./models/MiniLM}   # a fine-tuned encoder (kd.jobs.teacher_spec)
    caches:                            # one per seed, or `ensemble: seeds` for one over all seeds
      mtm: {teachers: [mtm]}
      mix: {teachers: [bert, mtm]}     # an ensemble: the teachers' outputs averaged
      own: {teachers: [mtm], unlabelled: {rest_of_train: true, max_sentences: 2000}}  # kd.jobs.plan_text
    models:                            # kind: stm, student (from a cache), teacher (a teacher's column), tuned
      STM: {kind: stm}
      MTM: {kind: teacher, teacher: mtm}
      SM: {kind: student, cache: mtm, loss: logits, alpha: 0.5}
      SMU: {kind: student, cache: own, unlabelled: true, unlabelled_ratio: 2}
      TSM: {kind: tuned, cache: own, space: kl, trials: 20, unlabelled: true}  # kd.jobs.plan_tuned
    tables:
      table1: {title: ..., models: [STM, MTM, SM], metric: test_f1, posthoc: wilcoxon-holm,
               versus: {SM: [MTM, STM]}}   # per corpus, did SM pass them (default: `default_versus`)

A transformer teacher (`kind: transformer`) fine-tunes `base` with `kd train-teacher --kind
transformer`'s defaults (learning rate 5e-5, 3 epochs, dropout 0.1) and refuses the BiLSTM's size
options. Its cell cannot resume: transformer runs keep no checkpoint, so a killed one starts again
from the pretrained encoder (a BiLSTM cell resumes from its last epoch).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kd.data.types import SPLITS
from kd.errors import FieldError
from kd.jobs.names import check_references
from kd.jobs.plan_file import (DISTILL_KEYS, MODEL_KEYS, OPTION_KEYS, SCHEDULE_KEYS, SPLIT_KEYS, TRAINING_KEYS,
                               PlanFile, as_mapping, as_names, check_known, check_rules, is_int, merge_options)
from kd.jobs.plan_text import TextSpec, parse_text
from kd.jobs.teacher_spec import TeacherSpec, parse_teacher
from kd.statistics.tests import POSTHOC_TESTS
from kd.utils.paths import is_path_component

__all__ = ["DISTILL_KEYS", "MODEL_KEYS", "OPTION_KEYS", "SCHEDULE_KEYS", "SPLIT_KEYS", "TRAINING_KEYS", "CacheSpec",
           "ModelSpec", "Plan", "TableSpec", "TeacherSpec", "load_plan", "with_overrides"]

MODEL_KINDS = ("stm", "student", "teacher", "tuned")
ENSEMBLES = ("seed", "seeds")  # one cache per seed, or one over the teachers of every seed
TOP_KEYS = ("name", "data_dir", "corpora", "seeds", "subsample", "defaults", "teachers", "caches", "models", "tables")


@dataclass(frozen=True)
class CacheSpec:
    name: str
    teachers: tuple[str, ...]  # names of teachers, or of models (a single-corpus teacher)
    ensemble: str = "seed"
    layers: tuple[str, ...] = ()  # () = the layers the losses of its students read
    dtype: str = "float16"
    unlabelled: TextSpec | None = None  # the transfer text it also caches (kd.jobs.plan_text)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    kind: str
    options: dict[str, Any]
    cache: str | None = None  # a student's cache
    teacher: str | None = None  # kind teacher: the teacher whose runs make the column
    tuning: dict[str, Any] | None = None  # kind tuned: its study (kd.jobs.plan_tuned)
    unlabelled: TextSpec | None = None  # a student's transfer text: its cache's


@dataclass(frozen=True)
class TableSpec:
    name: str
    models: tuple[str, ...]
    title: str = ""
    metric: str = "test_f1"
    posthoc: str = "wilcoxon-holm"
    alpha: float = 0.05
    rope: float = 0.5  # of the Bayesian tests, in F1 points; 0: off
    versus: tuple[tuple[str, str], ...] = ()  # (model, baseline): did it pass it, per corpus (kd.statistics.versus)


@dataclass(frozen=True)
class Plan:
    path: Path
    name: str
    text: str
    data_dir: Path | None
    corpora: tuple[str, ...]
    seeds: tuple[int, ...]
    subsample: dict[str, int] = field(default_factory=dict)
    teachers: dict[str, TeacherSpec] = field(default_factory=dict)
    caches: dict[str, CacheSpec] = field(default_factory=dict)
    models: dict[str, ModelSpec] = field(default_factory=dict)
    tables: dict[str, TableSpec] = field(default_factory=dict)


def load_plan(path: str | Path, data_dir: str | Path | None = None) -> Plan:
    """Reads and checks a plan. `data_dir` (the CLI's --data-dir) overrides the plan's own."""
    source = PlanFile(Path(path))
    data = source.data
    if not isinstance(data, dict):
        raise source.error((), "expected a mapping with corpora, seeds, models and tables")
    check_known(source, (), data, TOP_KEYS)
    for required in ("corpora", "seeds", "models", "tables"):
        if required not in data:
            raise source.error((required,), "missing")
    defaults = merge_options(source, ("defaults",), as_mapping(source, ("defaults",), data.get("defaults")),
                             OPTION_KEYS + SCHEDULE_KEYS, {})
    teachers = {name: parse_teacher(source, name, spec, defaults)
                for name, spec in as_mapping(source, ("teachers",), data.get("teachers")).items()}
    caches = {name: _cache(source, name, spec) for name, spec in as_mapping(source, ("caches",), data.get("caches")).items()}
    models = {name: _model(source, name, spec, defaults)
              for name, spec in as_mapping(source, ("models",), data.get("models")).items()}
    tables = {name: _table(source, name, spec, models, caches)
              for name, spec in as_mapping(source, ("tables",), data.get("tables")).items()}
    models = {name: _student_text(source, spec, caches) for name, spec in models.items()}
    plan = Plan(path=Path(path), name=_folder_name(source, ("name",), data.get("name") or Path(path).stem),
                text=source.text,
                data_dir=_data_dir(source, data.get("data_dir"), data_dir),
                corpora=tuple(as_names(source, ("corpora",), data["corpora"])),
                seeds=tuple(_seeds(source, data["seeds"])), subsample=_subsample(source, data.get("subsample")),
                teachers=teachers, caches=caches, models=models, tables=tables)
    check_references(plan, source.error)
    return plan


def _folder_name(source: PlanFile, key: tuple, value: Any) -> str:
    """A name that becomes a folder (the plan's under .kd/plans, a table's under the reports): one
    path component, so that no plan writes outside its folders."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):  # `name: 2023` is a number in YAML
        value = str(value)
    if not is_path_component(value):
        raise source.error(key, f"{value!r}: expected a name that is a single folder name (no /, \\, . or ..)")
    return value


def _seeds(source: PlanFile, value: Any) -> list[int]:
    if not isinstance(value, list) or not value or not all(is_int(v) for v in value) or len(set(value)) != len(value):
        raise source.error(("seeds",), "expected a list of distinct integers")
    return list(value)


def _data_dir(source: PlanFile, value: Any, given: str | Path | None) -> Path | None:
    if given:
        return Path(given).resolve()
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise source.error(("data_dir",), "expected a folder path")
    return (source.path.parent / value).resolve()


def _subsample(source: PlanFile, value: Any) -> dict[str, int]:
    caps = as_mapping(source, ("subsample",), value)
    check_known(source, ("subsample",), caps, SPLITS)
    for split, cap in caps.items():
        if not is_int(cap) or cap < 1:
            raise source.error(("subsample", split), f"{cap!r}: expected a number of sentences of at least 1")
    return dict(caps)


def _cache(source: PlanFile, name: str, spec: Any) -> CacheSpec:
    from kd.cache.store import DTYPES, LAYERS

    key = ("caches", name)
    spec = as_mapping(source, key, spec)
    check_known(source, key, spec, ("teachers", "ensemble", "layers", "dtype", "unlabelled"))
    if "teachers" not in spec:
        raise source.error(key + ("teachers",), "missing: the teachers (or models) whose outputs it holds")
    ensemble = spec.get("ensemble", "seed")
    if ensemble not in ENSEMBLES:
        raise source.error(key + ("ensemble",), f"{ensemble!r}: use seed (one cache per seed) or seeds (one over all)")
    layers = tuple(as_names(source, key + ("layers",), spec["layers"])) if "layers" in spec else ()
    unknown = [layer for layer in layers if layer not in LAYERS]
    if unknown:
        raise source.error(key + ("layers",), f"{', '.join(unknown)}: use layers among {', '.join(LAYERS)}")
    dtype = spec.get("dtype", "float16")
    if dtype not in DTYPES:
        raise source.error(key + ("dtype",), f"{dtype!r}: use one of {', '.join(DTYPES)}")
    return CacheSpec(name=name, teachers=tuple(as_names(source, key + ("teachers",), spec["teachers"])),
                     ensemble=ensemble, layers=layers, dtype=dtype,
                     unlabelled=parse_text(source, key + ("unlabelled",), spec["unlabelled"]) if "unlabelled" in spec else None)


def _model(source: PlanFile, name: str, spec: Any, defaults: dict[str, Any]) -> ModelSpec:
    key = ("models", name)
    spec = as_mapping(source, key, spec)
    kind = spec.get("kind")
    if kind not in MODEL_KINDS:
        raise source.error(key + ("kind",), f"{kind!r}: use one of {', '.join(MODEL_KINDS)}")
    if kind == "teacher":
        check_known(source, key, spec, ("kind", "teacher"))
        if not isinstance(spec.get("teacher"), str):
            raise source.error(key + ("teacher",), "missing: the teacher whose runs make this column")
        return ModelSpec(name=name, kind=kind, options={}, teacher=spec["teacher"])
    if kind == "tuned":
        return _tuned(source, key, name, spec)
    student = kind == "student"
    check_known(source, key, spec, ("kind", *OPTION_KEYS, *((*DISTILL_KEYS, "cache", "unlabelled") if student else ())))
    options = merge_options(source, key, spec, OPTION_KEYS + (DISTILL_KEYS if student else ()), defaults)
    check_rules(source, key, options, distill=student)
    if student and not isinstance(spec.get("cache"), str):
        raise source.error(key + ("cache",), "missing: the cache a student learns from")
    return ModelSpec(name=name, kind=kind, options=options, cache=spec.get("cache") if student else None,
                     unlabelled=_model_text(source, key, spec))


def _tuned(source: PlanFile, key: tuple, name: str, spec: dict) -> ModelSpec:
    from kd.jobs.plan_tuned import TUNED_KEYS, parse_tuned

    check_known(source, key, spec, TUNED_KEYS)
    if not isinstance(spec.get("cache"), str):
        raise source.error(key + ("cache",), "missing: the cache a tuned student learns from")
    tuning = parse_tuned(source, key, spec)
    return ModelSpec(name=name, kind="tuned", options={"loss": tuning["loss"]}, cache=spec["cache"],
                     unlabelled=_model_text(source, key, spec), tuning=tuning)


def _student_text(source: PlanFile, model: ModelSpec, caches: dict[str, CacheSpec]) -> ModelSpec:
    """A student's `unlabelled`: its cache's text (`true`, or the same file or specification)."""
    if model.unlabelled is None or model.cache not in caches:
        return model
    cached = caches[model.cache].unlabelled
    key = ("models", model.name, "unlabelled")
    if cached is None:
        raise source.error(key, f"cache {model.cache} caches no unlabelled text (give it `unlabelled:`)")
    if model.unlabelled is not True and model.unlabelled != cached:
        raise source.error(key, f"not the text of its cache {model.cache} (use `unlabelled: true` for it)")
    return dataclasses.replace(model, unlabelled=cached)


def _table(source: PlanFile, name: str, spec: Any, models: dict[str, ModelSpec],
           caches: dict[str, CacheSpec]) -> TableSpec:
    key = ("tables", _folder_name(source, ("tables", name), name))
    spec = as_mapping(source, key, spec)
    check_known(source, key, spec, ("title", "models", "metric", "posthoc", "alpha", "bayesian", "versus"))
    columns = tuple(as_names(source, key + ("models",), spec.get("models")))
    if len(columns) < 3:
        raise source.error(key + ("models",), "the Friedman test needs at least three models")
    posthoc = spec.get("posthoc", "wilcoxon-holm")
    if posthoc not in POSTHOC_TESTS:
        raise source.error(key + ("posthoc",), f"{posthoc!r}: use one of {', '.join(POSTHOC_TESTS)}")
    alpha, rope = spec.get("alpha", 0.05), spec.get("bayesian", 0.5)
    if not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        raise source.error(key + ("alpha",), f"{alpha!r}: expected a significance level between 0 and 1")
    if not isinstance(rope, (int, float)) or not 0 <= rope < math.inf:
        raise source.error(key + ("bayesian",), f"{rope!r}: expected 0 (off) or a ROPE in F1 points")
    versus = _versus(source, key + ("versus",), spec["versus"], columns) if "versus" in spec else \
        default_versus(columns, models, caches)
    return TableSpec(name=name, models=columns, title=str(spec.get("title", "")), metric=str(spec.get("metric", "test_f1")),
                     posthoc=posthoc, alpha=float(alpha), rope=float(rope), versus=versus)


def _versus(source: PlanFile, key: tuple, value: Any, columns: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """`versus: {model: [baseline, ...]}`, every name a model of the table; `{}`: no pairs."""
    pairs = []
    for model, baselines in as_mapping(source, key, value).items():
        if model not in columns:
            raise source.error(key + (model,), f"{model!r}: not a model of this table (models: {', '.join(columns)})")
        for index, baseline in enumerate(as_names(source, key + (model,), baselines)):
            if baseline not in columns:
                raise source.error(key + (model, index), f"{baseline!r}: not a model of this table "
                                                         f"(models: {', '.join(columns)})")
            if baseline == model:
                raise source.error(key + (model, index), f"{baseline!r}: a model cannot be its own baseline")
            pairs.append((model, baseline))
    return tuple(pairs)


def default_versus(columns: tuple[str, ...], models: dict[str, ModelSpec],
                   caches: dict[str, CacheSpec]) -> tuple[tuple[str, str], ...]:
    """Without `versus:`, each student or tuned model of the table against the table's columns of
    the teachers its cache holds (a teacher column, or a model the cache names), then against the
    table's single-task models (kind stm)."""
    in_table = {name: models[name] for name in columns if name in models}  # unknown names: check_references
    stms = [name for name, spec in in_table.items() if spec.kind == "stm"]
    pairs = []
    for name, spec in in_table.items():
        if spec.kind not in ("student", "tuned"):
            continue
        held = caches[spec.cache].teachers if spec.cache in caches else ()
        teachers = [other for other, o in in_table.items() if other in held or (o.kind == "teacher" and o.teacher in held)]
        pairs += [(name, baseline) for baseline in dict.fromkeys(teachers + stms) if baseline != name]
    return tuple(pairs)


def with_overrides(plan: Plan, *, only: str | None = None, corpora: list[str] | None = None,
                   seeds: list[int] | None = None, epochs: int | None = None,
                   max_train_sentences: int | None = None) -> Plan:
    """The plan as `kd plan run --only/--corpora/--seeds/--epochs/--max-train-sentences` asks for it."""
    tables = plan.tables
    if only:
        if only not in plan.tables:
            raise FieldError("only", only, f"the plan has no such table (tables: {', '.join(plan.tables)})")
        tables = {only: plan.tables[only]}
    if epochs is not None and epochs < 1:
        raise FieldError("epochs", epochs, "must be at least 1")
    if max_train_sentences is not None and max_train_sentences < 1:
        raise FieldError("max_train_sentences", max_train_sentences, "must be at least 1")
    with_epochs = (lambda options: options) if epochs is None else (lambda options: {**options, "epochs": epochs})
    teachers = {n: dataclasses.replace(t, options=with_epochs(t.options)) for n, t in plan.teachers.items()}
    models = {n: dataclasses.replace(m, options=with_epochs(m.options) if m.options else m.options)
              for n, m in plan.models.items()}
    subsample = dict(plan.subsample)
    if max_train_sentences is not None:
        subsample["train"] = max_train_sentences
    return dataclasses.replace(plan, tables=tables, teachers=teachers, models=models, subsample=subsample,
                               corpora=tuple(corpora) if corpora else plan.corpora,
                               seeds=tuple(seeds) if seeds else plan.seeds)


def _model_text(source: PlanFile, key: tuple, spec: dict) -> Any:
    """A student's or a tuned model's `unlabelled` (true: its cache's text; else a file or specification,
    the same as its cache's), and its `unlabelled_ratio`, which draws from that text: none, no ratio."""
    text = spec.get("unlabelled")
    if text is not None and text is not True:
        text = parse_text(source, key + ("unlabelled",), text)
    if text is None and "unlabelled_ratio" in spec:
        raise source.error(key + ("unlabelled_ratio",), "applies only with unlabelled text (unlabelled: true)")
    return text
