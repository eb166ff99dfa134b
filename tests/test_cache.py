"""The teacher output cache: exact round trips, cached outputs equal to the live teacher,
ensembles, refusal of foreign data, atomicity, and `kd cache-logits` / its MLflow entry point.

The teachers are trained once for the module (tiny models, one epoch: these tests check plumbing
and exactness, not accuracy) in one MLflow store shared by every test; tests that count runs use
their own experiment.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from mlflow import MlflowClient

from kd.cache.build import CacheJob, build_cache, open_cache_run
from kd.cache.store import (CacheReader, CachedTargets, CacheWriter, Manifest, fingerprint, sentence_hashes)
from kd.cache.teachers import load_teacher
from kd.cli.main import cli
from kd.data.batching import EncodedDataset
from kd.data.corpora import load_split
from kd.errors import KdError
from tests.conftest import SMALL_MODEL, isolated_store, make_corpora, one_line_error, run_kd

CPU = torch.device("cpu")
ALL_LAYERS = "logits,task,shared,marginals"
SPLITS = ("train", "devel")


# ------------------------------------------------------------------------------ fixtures


@dataclass
class Store:
    uri: str
    data_dir: Path
    root: Path
    teachers: dict[str, str]  # name -> run id

    @property
    def client(self) -> MlflowClient:
        return MlflowClient(self.uri)

    def runs(self, experiment: str):
        found = self.client.get_experiment_by_name(experiment)
        return [] if found is None else self.client.search_runs([found.experiment_id])

    def sentences(self, task: str, splits=SPLITS):
        return [s for split in splits for s in load_split(self.data_dir / task, split)]




@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    """The conftest corpora, one MLflow store, and four teachers: softmax STMs on `tiny` with seeds
    1 and 2, a CRF STM on `tiny`, and a softmax MTM on `tiny,other`."""
    root = tmp_path_factory.mktemp("cache")
    data_dir = make_corpora(root / "corpora")
    with isolated_store(root) as uri:
        common = ["--data-dir", str(data_dir), "--epochs", "1", *SMALL_MODEL, "--experiment", "teachers", "--json"]
        teachers = {
            "soft1": run_kd("train", "--task", "tiny", "--seed", "1", *common)["run_id"],
            "soft2": run_kd("train", "--task", "tiny", "--seed", "2", *common)["run_id"],
            "crf": run_kd("train", "--task", "tiny", "--output", "crf", *common)["run_id"],
            "mtm": run_kd("train-teacher", "--tasks", "tiny,other", *common)["run_id"],
        }
        yield Store(uri=uri, data_dir=data_dir, root=root, teachers=teachers)


def cache(store: Store, teachers: str, *extra: str, experiment: str = "caches") -> dict:
    ids = ",".join(store.teachers[name] for name in teachers.split(","))
    return run_kd("cache-logits", "--teacher", ids, "--data-dir", str(store.data_dir), "--experiment", experiment,
                  "--json", *extra)


@pytest.fixture(scope="module")
def full(store) -> dict[str, dict]:
    """float32 caches of every layer, train and devel, for the softmax, CRF and multi-task teachers."""
    return {name: cache(store, name, "--layers", ALL_LAYERS, "--dtype", "float32") for name in ("soft1", "crf", "mtm")}


@pytest.fixture(scope="module")
def half(store) -> dict:
    """The default cache: float16 logits of train and devel of the seed-1 softmax teacher."""
    return cache(store, "soft1")


def reader_of(store: Store, run_id: str) -> CacheReader:
    return open_cache_run(run_id, store.client, store.uri)[0]




# --------------------------------------------------------------------- round trip (no MLflow)


def write_random_cache(directory: Path, dtype: str, seed: int = 0):
    """A cache of arbitrary values: one task, train and devel, layers of widths 5 and 7."""
    rng = np.random.default_rng(seed)
    tags = ["O", "B-X", "I-X", "B-Y", "I-Y"]
    widths = {"logits": 5, "task": 7}
    words = ["a", "b", "c", "d", "e", "f", "g"]
    sentences, values = {}, {}
    writer = CacheWriter(directory, dtype)
    staging = writer.staging
    entries = {}
    for split, count in (("train", 41), ("devel", 13)):
        sentences[split] = [tuple(rng.choice(words, size=rng.integers(1, 10))) for _ in range(count)]
        tokens = sum(len(s) for s in sentences[split])
        values[split] = {}
        for layer, width in widths.items():
            array = (rng.standard_normal((tokens, width)) * 10 ** rng.uniform(-3, 4, (tokens, 1))).astype(np.float32)
            array.flat[:4] = [np.finfo(np.float32).max, np.finfo(np.float32).tiny, -0.0, 1e-40]  # extremes
            values[split][layer] = array
        entries[split] = writer.write_split("t", split, sentences[split], values[split])
        assert entries[split].sentences == count and entries[split].tokens == tokens
        assert entries[split].fingerprint == fingerprint(sentence_hashes(sentences[split]))
    manifest = Manifest(teacher_runs=["x"], ensemble="single", teacher_outputs=["softmax"], tasks={"t": tags},
                        splits={"t": entries}, layers=list(widths), widths={"t": widths}, dtype=dtype)
    assert writer.commit(manifest) == directory
    assert not staging.exists(), "the staging folder is moved into place"
    return sentences, values, tags


def expected_rows(sentences, values, dtype: str):
    """Per layer, the list of (length, dim) float32 rows of each sentence of train + devel."""
    rows = {}
    for layer in values["train"]:
        rows[layer] = []
        for split in SPLITS:
            offsets = np.cumsum([0] + [len(s) for s in sentences[split]])
            stored = values[split][layer].astype(dtype).astype(np.float32)
            rows[layer].extend(stored[offsets[i]:offsets[i + 1]] for i in range(len(sentences[split])))
    return rows


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_round_trip_gives_back_exactly_the_rows_of_any_batch(tmp_path, dtype):
    sentences, values, tags = write_random_cache(tmp_path / "cache", dtype)
    reader = CacheReader(tmp_path / "cache")
    assert reader.manifest.dtype == dtype and reader.manifest.layers == ["logits", "task"]
    for split in SPLITS:  # the arrays on disk, split by split
        for layer, array in values[split].items():
            stored = reader.split("t", split).layers[layer]
            assert stored.dtype == np.dtype(dtype)
            assert np.array_equal(np.asarray(stored), array.astype(dtype))

    everything = sentences["train"] + sentences["devel"]
    targets = CachedTargets(reader, "t", list(SPLITS), everything, ["logits", "task"], tags=tags[:3])
    expected = expected_rows(sentences, values, dtype)
    rng = np.random.default_rng(1)
    n_train = len(sentences["train"])
    batches = [rng.choice(len(everything), size=size, replace=False) for size in (1, 5, 17, 32)]
    batches += [np.arange(len(everything)), np.array([n_train - 1, n_train, 0, len(everything) - 1]),
                np.arange(n_train, len(everything))[::-1].copy()]
    for ids in batches:
        width = max(len(everything[i]) for i in ids) + 2  # wider than needed: padding must be zero
        gathered = targets.gather(torch.from_numpy(ids), width)
        assert set(gathered) == {"logits", "task"}
        for layer, tensor in gathered.items():
            assert tensor.dtype == torch.float32 and tensor.shape == (len(ids), width, expected[layer][0].shape[1])
            padded = tensor.numpy()
            for row, sentence in enumerate(ids):
                length = len(everything[sentence])
                assert np.array_equal(padded[row, :length], expected[layer][sentence]), (layer, sentence)
                assert not padded[row, length:].any(), "padding is zero"
                assert not np.signbit(padded[row, length:]).any()


def test_one_split_round_trip_and_the_split_alone(tmp_path):
    sentences, values, _ = write_random_cache(tmp_path / "cache", "float32", seed=3)
    targets = CachedTargets(CacheReader(tmp_path / "cache"), "t", ["devel"], sentences["devel"], ["task"])
    expected = expected_rows({"train": [], "devel": sentences["devel"]},
                             {"train": {"task": np.zeros((0, 7), np.float32)}, "devel": values["devel"]}, "float32")
    ids = np.arange(len(sentences["devel"]))[::-1].copy()
    gathered = targets.gather(torch.from_numpy(ids), max(len(s) for s in sentences["devel"]))
    assert set(gathered) == {"task"}
    for row, sentence in enumerate(ids):
        assert np.array_equal(gathered["task"][row, :len(sentences["devel"][sentence])].numpy(),
                              expected["task"][sentence])


def test_arrays_that_do_not_match_the_manifest_are_refused(tmp_path):
    sentences, values, _ = write_random_cache(tmp_path / "cache", "float32", seed=4)
    np.save(tmp_path / "cache" / "t" / "devel" / "task.npy", values["devel"]["task"][:-1])  # one row short
    with pytest.raises(KdError, match=r"devel/task\.npy: shape .*damaged"):
        CacheReader(tmp_path / "cache")  # found on opening, before any split is read
    (tmp_path / "cache" / "manifest.json").write_text("{not json")
    with pytest.raises(KdError, match="unreadable manifest"):
        CacheReader(tmp_path / "cache")


def test_an_incomplete_folder_is_not_a_cache(tmp_path):
    writer = CacheWriter(tmp_path / "cache", "float16")
    writer.write_split("t", "train", [("a",)], {"logits": np.zeros((1, 3), np.float32)})
    writer.abort(RuntimeError("interrupted"))
    assert not writer.staging.exists() and not (tmp_path / "cache").exists()
    with pytest.raises(KdError, match="not a complete kd cache"):
        CacheReader(tmp_path / "cache")
    with pytest.raises(KdError, match="^dtype 'float64'"):
        CacheWriter(tmp_path / "other", "float64")


# ------------------------------------------------------------- cached = live teacher


def live_outputs(teacher, task: str, tokens) -> dict[str, np.ndarray]:
    """The teacher's outputs for one sentence alone (no padding), model in eval mode."""
    from kd.data.types import Sentence

    dataset = EncodedDataset([Sentence(tuple(tokens), ("O",) * len(tokens))], teacher.vocabularies, task,
                             with_tags=False)
    batch = dataset.batch(np.array([0]))
    teacher.model.eval()
    with torch.no_grad():
        output = teacher.model(batch, task)
        logits = output.logits.float()
        crf = teacher.model.crf(task)
        marginals = crf.marginals(logits, batch.mask) if crf is not None else torch.softmax(logits, dim=2)
    return {"logits": logits[0].numpy(), "task": output.task_hidden[0].numpy(),
            "shared": output.shared_hidden[0].numpy(), "marginals": marginals[0].numpy()}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["soft1", "crf", "mtm"])
def test_cached_outputs_equal_the_live_teacher(store, full, name):
    summary = full[name]
    reader = reader_of(store, summary["run_id"])
    manifest = reader.manifest
    teacher = load_teacher(store.teachers[name], store.client, store.uri, CPU)
    tasks = ["tiny", "other"] if name == "mtm" else ["tiny"]
    assert list(manifest.tasks) == tasks and manifest.dtype == "float32"
    assert manifest.layers == ALL_LAYERS.split(",")
    rng = np.random.default_rng(0)
    for task in tasks:
        sentences = store.sentences(task)
        tokens = [s.tokens for s in sentences]
        targets = CachedTargets(reader, task, list(SPLITS), tokens, manifest.layers, tags=[t for s in sentences for t in s.tags])
        live = [live_outputs(teacher, task, t) for t in tokens]
        widths = manifest.widths[task]
        assert widths == {layer: live[0][layer].shape[1] for layer in manifest.layers}
        order = rng.permutation(len(tokens))
        for start in range(0, len(order), 32):  # student-like batches mixing train and devel
            ids = order[start:start + 32]
            width = max(len(tokens[i]) for i in ids)
            gathered = targets.gather(torch.from_numpy(ids), width)
            for row, sentence in enumerate(ids):
                length = len(tokens[sentence])
                for layer in manifest.layers:
                    np.testing.assert_allclose(gathered[layer][row, :length].numpy(), live[sentence][layer],
                                               rtol=0, atol=1e-5, err_msg=f"{task} {layer} sentence {sentence}")
                    assert not gathered[layer][row, length:].any()
        cached = targets.gather(torch.arange(len(tokens)), max(len(t) for t in tokens))
        lengths = [len(t) for t in tokens]
        mask = torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]
        marginals = cached["marginals"]
        assert torch.allclose(marginals.sum(dim=2)[mask], torch.ones(int(mask.sum())), atol=1e-5), "posteriors"
        assert (marginals >= 0).all()
        # The marginals are those of the cached logits: softmax, or the CRF's forward-backward.
        crf = teacher.model.crf(task)
        with torch.no_grad():
            recomputed = crf.marginals(cached["logits"], mask) if crf is not None else torch.softmax(
                cached["logits"], dim=2)
        assert torch.allclose(marginals[mask], recomputed[mask], atol=1e-5)
        if crf is not None:
            assert not torch.allclose(marginals[mask], torch.softmax(cached["logits"], dim=2)[mask], atol=1e-3)


@pytest.mark.slow
def test_cache_run_records_what_it_holds(store, full):
    summary = full["mtm"]
    run = store.client.get_run(summary["run_id"])
    assert run.info.status == "FINISHED"
    tags, params = run.data.tags, run.data.params
    mtm = store.teachers["mtm"]
    assert tags["model_kind"] == "cache" and tags["ensemble"] == "single" and tags["teacher_runs"] == mtm
    assert tags["task"] == "tiny,other" and tags["output"] == "softmax"
    assert run.info.run_name == "cache-2corpora-single"  # named, not MLflow's random words
    assert params["layers"] == ALL_LAYERS and params["dtype"] == "float32" and params["splits"] == "train,devel"
    manifest = reader_of(store, summary["run_id"]).manifest
    teacher = load_teacher(mtm, store.client, store.uri, CPU)
    assert manifest.teacher_runs == [mtm] and manifest.ensemble == "single" and manifest.teacher_outputs == ["softmax"]
    assert manifest.tasks == {task: teacher.vocabularies.tags[task] for task in ("tiny", "other")}
    assert manifest.layers == ALL_LAYERS.split(",") and manifest.dtype == "float32"
    assert manifest.widths["other"] == {"logits": 3, "task": 32, "shared": 32, "marginals": 3}
    for task in ("tiny", "other"):
        assert list(manifest.splits[task]) == list(SPLITS)
        for split in SPLITS:
            sentences = load_split(store.data_dir / task, split)
            entry = manifest.splits[task][split]
            assert entry.sentences == len(sentences) and entry.tokens == sum(len(s) for s in sentences)
            assert entry.fingerprint == fingerprint(sentence_hashes(s.tokens for s in sentences))
    assert manifest.teacher_parameters == {task: teacher.model.num_parameters(task) for task in ("tiny", "other")}
    assert summary["cached_tokens"] == sum(e.tokens for splits in manifest.splits.values() for e in splits.values())
    assert summary["tokens_per_second"] > 0 and summary["ensemble"] == "single"


@pytest.mark.slow
def test_bytes_per_token(store, full, half):
    tokens = sum(len(s) for s in store.sentences("tiny"))
    # float16 logits: 2 bytes x 5 tags per token, plus one .npy header per split file.
    metrics = store.client.get_run(half["run_id"]).data.metrics
    assert half["bytes_per_token/logits"] == metrics["bytes_per_token/logits"]
    assert 2 * 5 < metrics["bytes_per_token/logits"] <= 2 * 5 + 2 * 256 / tokens
    reader = reader_of(store, half["run_id"])
    files = [reader.directory / "tiny" / split / "logits.npy" for split in SPLITS]
    assert metrics["bytes_per_token/logits"] == pytest.approx(sum(f.stat().st_size for f in files) / tokens)
    assert reader.split("tiny", "train").layers["logits"].dtype == np.float16
    # float32, every layer: 4 bytes x width.
    metrics = store.client.get_run(full["soft1"]["run_id"]).data.metrics
    for layer, width in {"logits": 5, "marginals": 5, "task": 32, "shared": 32}.items():
        assert 4 * width < metrics[f"bytes_per_token/{layer}"] <= 4 * width + 2 * 256 / tokens, layer


@pytest.mark.slow
def test_float16_cache_is_the_float32_cache_rounded(store, full, half):
    rounded, exact = reader_of(store, half["run_id"]), reader_of(store, full["soft1"]["run_id"])
    for split in SPLITS:
        stored = np.asarray(rounded.split("tiny", split).layers["logits"])
        assert stored.dtype == np.float16
        assert np.array_equal(stored, np.asarray(exact.split("tiny", split).layers["logits"]).astype(np.float16))


# ------------------------------------------------------------------------------ ensembles


@pytest.mark.slow
@pytest.mark.parametrize("members, kind", [("soft1,soft2", "seeds"), ("soft1,crf", "mixed")])
def test_an_ensemble_caches_the_mean_of_its_members(store, full, members, kind):
    layers = ["logits", "marginals"]
    ensemble = cache(store, members, "--layers", ",".join(layers), "--dtype", "float32")
    first, second = members.split(",")
    alone = {name: full[name] if name in full else cache(store, name, "--layers", ",".join(layers), "--dtype", "float32")
             for name in (first, second)}
    run = store.client.get_run(ensemble["run_id"])
    ids = [store.teachers[first], store.teachers[second]]
    assert run.data.tags["ensemble"] == kind and ensemble["ensemble"] == kind
    assert run.data.tags["teacher_runs"] == ",".join(ids) and run.data.params["teacher_runs"] == ",".join(ids)
    manifest = reader_of(store, ensemble["run_id"]).manifest
    assert manifest.ensemble == kind and manifest.teacher_runs == ids
    assert manifest.teacher_outputs == ["softmax", "softmax" if kind == "seeds" else "crf"]
    for name in (first, second):
        assert reader_of(store, alone[name]["run_id"]).manifest.ensemble == "single"
    for split in SPLITS:
        parts = [reader_of(store, alone[name]["run_id"]).split("tiny", split) for name in (first, second)]
        mixed = reader_of(store, ensemble["run_id"]).split("tiny", split)
        for layer in layers:
            mean = (np.asarray(parts[0].layers[layer]) + np.asarray(parts[1].layers[layer])) / 2
            np.testing.assert_allclose(np.asarray(mixed.layers[layer]), mean, rtol=0, atol=1e-6, err_msg=layer)
            assert not np.allclose(parts[0].layers[layer], parts[1].layers[layer], atol=1e-3), "members differ"


@pytest.mark.slow
def test_teachers_of_different_corpora_do_not_ensemble(store):
    ids = f"{store.teachers['mtm']},{store.teachers['soft1']}"
    result = CliRunner().invoke(cli, ["cache-logits", "--teacher", ids, "--data-dir", str(store.data_dir),
                                      "--experiment", "cache-mismatch"])
    message = one_line_error(result)
    assert "different corpora" in message and store.teachers["mtm"] in message
    assert store.runs("cache-mismatch") == [], "no cache run is started"
    with pytest.raises(KdError, match="different corpora"):
        build_cache(CacheJob(teacher_runs=[store.teachers["soft1"], store.teachers["mtm"]],
                             data_dir=str(store.data_dir), experiment="cache-mismatch"), store.client, store.uri)


@pytest.mark.slow
def test_cache_finds_the_corpus_the_teacher_was_trained_on(store):
    """Without --data-dir (and no $KD_DATA_DIR), the corpus is looked up where the teacher found it."""
    summary = run_kd("cache-logits", "--teacher", store.teachers["soft1"], "--experiment", "cache-no-data-dir",
                     "--json")
    assert reader_of(store, summary["run_id"]).manifest.splits["tiny"]["train"].sentences == 200


# ------------------------------------------------------------------------------- refusals


@pytest.mark.slow
def test_the_cache_refuses_other_data(store, half):
    reader = reader_of(store, half["run_id"])
    sentences = store.sentences("tiny")
    tokens = [list(s.tokens) for s in sentences]
    CachedTargets(reader, "tiny", list(SPLITS), tokens, ["logits"], tags=[t for s in sentences for t in s.tags])

    for number in (8, 200 + 5):  # one token changed in train, then in devel
        changed = [list(t) for t in tokens]
        changed[number - 1][0] = changed[number - 1][0] + "x"
        with pytest.raises(KdError, match=rf"sentence {number} of tiny .*differs"):
            CachedTargets(reader, "tiny", list(SPLITS), changed, ["logits"])
    swapped = list(tokens)
    swapped[10], swapped[20] = swapped[20], swapped[10]
    with pytest.raises(KdError, match="sentence 11 of tiny .*2 differ"):  # the same sentences, another order
        CachedTargets(reader, "tiny", list(SPLITS), swapped, ["logits"])
    with pytest.raises(KdError, match="sentence 1 of tiny"):  # the splits in the other order
        CachedTargets(reader, "tiny", ["devel", "train"], tokens, ["logits"])
    with pytest.raises(KdError, match="holds 230 sentences .* has 229"):
        CachedTargets(reader, "tiny", list(SPLITS), tokens[:-1], ["logits"])
    with pytest.raises(KdError, match="holds 200 sentences .* has 230"):
        CachedTargets(reader, "tiny", ["train"], tokens, ["logits"])
    with pytest.raises(KdError, match="B-Gene"):
        CachedTargets(reader, "tiny", list(SPLITS), tokens, ["logits"], tags=["O", "B-Gene", "B-Chemical"])
    with pytest.raises(KdError, match="marginals"):
        CachedTargets(reader, "tiny", list(SPLITS), tokens, ["logits", "marginals"])
    with pytest.raises(KdError, match="test"):
        CachedTargets(reader, "tiny", ["train", "test"], tokens, ["logits"])
    with pytest.raises(KdError, match="other"):
        CachedTargets(reader, "other", ["train"], tokens, ["logits"])


@pytest.mark.parametrize("option, value, needle", [
    ("--layers", "logits,attention", "--layers"),
    ("--tasks", "other", "--tasks"),
    ("--teacher", "0" * 32, "0" * 32),
])
@pytest.mark.slow
def test_bad_cache_options_are_one_line_errors(store, option, value, needle):
    args = ["cache-logits", "--teacher", store.teachers["soft1"], "--data-dir", str(store.data_dir),
            "--experiment", "cache-bad", option, value]
    assert needle in one_line_error(CliRunner().invoke(cli, args))
    assert store.runs("cache-bad") == []


# ----------------------------------------------------------------------------- atomicity


def artifact_paths(client, run_id: str, path: str | None = None) -> list[str]:
    found = []
    for item in client.list_artifacts(run_id, path):
        found.extend(artifact_paths(client, run_id, item.path) if item.is_dir else [item.path])
    return found


@pytest.mark.slow
@pytest.mark.parametrize("error, status", [(RuntimeError, "FAILED"), (KeyboardInterrupt, "KILLED")])
def test_a_failed_caching_leaves_no_cache(store, monkeypatch, error, status):
    import kd.cache.build as build

    original = build.teacher_outputs_for_sentences
    calls = []

    def fail_on_second_call(*args, **kwargs):
        calls.append(args[1:3])
        if len(calls) == 2:
            raise error("the teacher crashed")
        return original(*args, **kwargs)

    writers = []
    original_init = CacheWriter.__init__

    def record(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        writers.append(self)

    monkeypatch.setattr(build, "teacher_outputs_for_sentences", fail_on_second_call)
    monkeypatch.setattr(CacheWriter, "__init__", record)
    experiment = f"cache-{status.lower()}"
    with pytest.raises(error, match="the teacher crashed"):
        build_cache(CacheJob(teacher_runs=[store.teachers["soft1"]], data_dir=str(store.data_dir),
                             experiment=experiment), store.client, store.uri)
    assert len(calls) == 2, "the first split was written before the failure"
    runs = store.runs(experiment)
    assert len(runs) == 1 and runs[0].info.status == status
    run_id = runs[0].info.run_id
    with pytest.raises(KdError, match="did not finish"):
        open_cache_run(run_id, store.client, store.uri)
    assert not any(Path(p).name == "manifest.json" for p in artifact_paths(store.client, run_id))
    assert len(writers) == 1
    assert not writers[0].staging.exists(), "the staging folder is removed"
    assert not (writers[0].directory / "manifest.json").exists()


@pytest.mark.slow
def test_open_cache_run_refuses_runs_that_are_not_caches(store, half):
    with pytest.raises(KdError, match="not a cache run"):
        open_cache_run(store.teachers["soft1"], store.client, store.uri)
    with pytest.raises(KdError, match="no such run"):
        open_cache_run("f" * 32, store.client, store.uri)
    reader, run = open_cache_run(half["run_id"], store.client, store.uri)
    assert run.info.run_id == half["run_id"] and reader.manifest.dtype == "float16"


# ------------------------------------------------------------------------- MLflow project


