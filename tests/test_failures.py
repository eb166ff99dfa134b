"""What the environment does to a run: a full disk wherever kd writes (checkpoints, the MLflow
artifact store, `kd predict --out`, the cache's staging folder) is one line naming the place and
the run is marked FAILED; a process killed mid-run leaves a RUNNING run that the next command to
meet it marks FAILED; a train run killed before its first epoch ends is resumed from scratch.
A full disk is simulated: the write raises OSError(ENOSPC)."""
from __future__ import annotations

import errno
import io
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from kd.cli.main import cli
from tests.conftest import REPO, SMALL_MODEL, die_after_epoch, make_corpora, run_kd, subprocess_env

pytestmark = pytest.mark.slow

FULL = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@dataclass
class World:
    """The module's store, corpora and one trained model (the teacher of the caching tests)."""

    root: Path
    data_dir: Path
    client: MlflowClient
    teacher: str

    def runs(self, experiment: str) -> list:
        found = self.client.get_experiment_by_name(experiment)
        return [] if found is None else self.client.search_runs([found.experiment_id])

    def train_args(self, experiment: str, *extra) -> list[str]:
        return [str(a) for a in ("train", "--task", "tiny", "--data-dir", self.data_dir, "--epochs", "1", *SMALL_MODEL,
                                 "--experiment", experiment, "--json", *extra)]


@pytest.fixture(scope="module")
def world(tmp_path_factory, shared_teachers):
    root = tmp_path_factory.mktemp("failures")
    data_dir = make_corpora(root / "corpora")
    with shared_teachers.open_copy(root) as uri:
        yield World(root=root, data_dir=data_dir, client=MlflowClient(uri), teacher=shared_teachers.stm)


def one_line(result, *needles: str) -> str:
    assert isinstance(result.exception, SystemExit), f"{result.exception!r}\n{result.output}"
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def only_run(world: World, experiment: str):
    (run,) = world.runs(experiment)
    return run


# --- a full disk -------------------------------------------------------------------------------------


def test_full_checkpoint_folder(world, tmp_path, monkeypatch):
    folder = (tmp_path / "checkpoints").resolve()
    fsync = os.fsync

    def full(fd):  # the checkpoint's bytes do not fit
        if os.readlink(f"/proc/self/fd/{fd}").startswith(str(folder)):
            raise FULL
        fsync(fd)
    monkeypatch.setattr(os, "fsync", full)
    result = CliRunner().invoke(cli, world.train_args("full-checkpoint", "--checkpoint-dir", folder))
    one_line(result, f"{folder}: no space left on device")
    assert only_run(world, "full-checkpoint").info.status == "FAILED"
    assert not [p for p in folder.iterdir() if p.suffix == ".pt"], "no checkpoint, not even a torn one"


def test_full_artifact_store(world, monkeypatch):
    store = str(world.root / "mlruns")
    copyfile = shutil.copyfile

    def full(source, target, **kwargs):
        if str(target).startswith(store):
            raise FULL
        return copyfile(source, target, **kwargs)
    monkeypatch.setattr(shutil, "copyfile", full)
    result = CliRunner().invoke(cli, world.train_args("full-store"))
    run = only_run(world, "full-store")
    [model] = [m for m in world.client.search_logged_models([run.info.experiment_id])
               if m.source_run_id == run.info.run_id]  # the run's logged model, whose files did not fit
    one_line(result, f"artifact store {model.artifact_location}: no space left on device")
    assert run.info.status == "FAILED" and model.status.name == "FAILED"


def test_full_predict_output(world, tmp_path, monkeypatch):
    import kd.data.conll as conll

    def full(tokens, tags, stream):
        stream.write("half\tO\n")
        raise FULL
    monkeypatch.setattr(conll, "_write_sentences", full)
    (tmp_path / "in.txt").write_text("the patient was given aspirin\n")
    out = tmp_path / "out" / "tags.conll"
    out.parent.mkdir()
    result = CliRunner().invoke(cli, ["predict", "--model", world.teacher, "--input", str(tmp_path / "in.txt"),
                                      "--out", str(out)])
    one_line(result, f"{out}: no space left on device")
    assert list(out.parent.iterdir()) == [], "neither the output nor its temporary file is left"


def short_write(save, path, array) -> None:
    """What numpy does when the disk fills mid-array: part of the file, and `OSError: N requested and
    M written` without errno."""
    whole = io.BytesIO()
    save(whole, array)
    Path(path).write_bytes(whole.getvalue()[:len(whole.getvalue()) // 2])
    raise OSError(f"{len(whole.getvalue())} requested and {len(whole.getvalue()) // 2} written")


@pytest.mark.parametrize("how", ["enospc", "short-write"])
def test_full_cache_staging_folder(world, monkeypatch, how):
    save = np.save

    def full(path, array, *args, **kwargs):
        if "/.cache." in str(path) and str(path).endswith("logits.npy"):
            if how == "enospc":
                raise FULL
            short_write(save, path, array)
        return save(path, array, *args, **kwargs)
    monkeypatch.setattr(np, "save", full)
    result = CliRunner().invoke(cli, ["cache-logits", "--teacher", world.teacher, "--data-dir", str(world.data_dir),
                                      "--experiment", f"full-cache-{how}"])
    message = one_line(result, "no space left on device", "/.cache.")
    run = only_run(world, f"full-cache-{how}")
    assert run.info.status == "FAILED" and "cache" not in {a.path for a in world.client.list_artifacts(run.info.run_id)}
    assert not Path(message.removeprefix("error: ").split(":")[0]).exists(), "the staging folder is removed"


# --- killed processes ----------------------------------------------------------------------------------

# Runs `kd ARGS` in a process that kills itself (SIGKILL: no handler runs) when it reaches PATCH.
KILLED_AT = """
import os, signal, sys, importlib
module, name = sys.argv[1].rsplit(".", 1)
setattr(importlib.import_module(module), name, lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL))
from kd.cli.main import cli
cli(sys.argv[2:], prog_name="kd")
"""


def killed(world: World, patch: str, *args) -> str:
    """Runs kd in a process killed at `patch`; returns the id of the run it left RUNNING."""
    result = subprocess.run([sys.executable, "-c", KILLED_AT, patch, *map(str, args)], cwd=world.root,
                            env=subprocess_env(world.client.tracking_uri), capture_output=True, text=True, timeout=300)
    assert result.returncode == -9, result.stderr[-2000:]
    experiment = args[args.index("--experiment") + 1]
    (run,) = world.runs(experiment)
    assert run.info.status == "RUNNING" and run.data.tags["kd.pid"].isdigit()
    return run.info.run_id


def test_a_killed_caching_is_marked_failed_by_the_next_command(world):
    run_id = killed(world, "kd.cache.build.teacher_outputs_for_sentences", "cache-logits", "--teacher",
                    world.teacher, "--data-dir", world.data_dir, "--experiment", "killed-cache")
    result = CliRunner().invoke(cli, ["distill", "--task", "tiny", "--cache", run_id, "--data-dir",
                                      str(world.data_dir)])
    one_line(result, f"--cache {run_id}", "status FAILED", "ended without finishing the run")
    assert world.client.get_run(run_id).info.status == "FAILED"


def test_a_train_run_killed_before_its_first_checkpoint_resumes_from_scratch(world):
    run_id = killed(world, "kd.training.assemble.train", *world.train_args("killed-train"))
    # A teacher that never finished: refused, and recognised as dead.
    result = CliRunner().invoke(cli, ["cache-logits", "--teacher", run_id, "--data-dir", str(world.data_dir)])
    one_line(result, f"--teacher {run_id}", "status FAILED")
    resumed = run_kd("train", "--resume", run_id, "--json")
    straight = run_kd(*world.train_args("straight"))
    assert resumed["run_id"] == run_id and world.client.get_run(run_id).info.status == "FINISHED"
    assert resumed["test_f1"] == straight["test_f1"] and resumed["epochs_trained"] == 1


def test_a_run_whose_process_is_alive_is_not_taken_over(world):
    """The owner tags name a live process (this one's parent): the run is running, not dead."""
    run = world.client.create_run(world.client.get_experiment_by_name("teachers").experiment_id,
                                  tags={"kd.host": socket.gethostname(), "kd.pid": str(os.getppid()),
                                        "checkpoint": str(REPO / "nowhere.pt")})
    result = CliRunner().invoke(cli, ["train", "--resume", run.info.run_id])
    one_line(result, "still running")
    assert world.client.get_run(run.info.run_id).info.status == "RUNNING"


# --- a refused resume ---------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_a_refused_resume_leaves_the_run_as_it_found_it(world, monkeypatch, damage):
    die_after_epoch(monkeypatch, 1)
    result = CliRunner().invoke(cli, world.train_args(f"refused-resume-{damage}", "--epochs", "3"))
    assert isinstance(result.exception, KeyboardInterrupt) or result.exit_code != 0, result.output
    monkeypatch.undo()
    before = only_run(world, f"refused-resume-{damage}")
    checkpoint = Path(before.data.tags["checkpoint"])
    if damage == "truncated":
        checkpoint.write_bytes(checkpoint.read_bytes()[:100])
    else:
        checkpoint.unlink()
    result = CliRunner().invoke(cli, ["train", "--resume", before.info.run_id])
    one_line(result, str(checkpoint))
    after = world.client.get_run(before.info.run_id)
    assert after.info.status == before.info.status == "KILLED"
    assert {k: v for k, v in after.data.tags.items() if k.startswith("kd.")} == \
        {k: v for k, v in before.data.tags.items() if k.startswith("kd.")}, "the owner tags are unchanged"
