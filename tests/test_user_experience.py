"""What a user sees around the commands (issue 15): option parsing as `mlflow run` passes it, one
source per option set, the MLproject's parameters, the MLflow UI's experiment kind and logged model,
per-corpus metric names, system metrics, the progress display and `kd tune --set`."""
from __future__ import annotations

import io
import re
import time
from dataclasses import fields

import click
import pytest
import yaml
from click.testing import CliRunner
from rich.console import Console

from kd.cli.main import cli
from kd.cli.options import WholeNumber
from kd.cli.progress import TrainingDisplay, format_terms, ui_link
from kd.tracking.metrics import corpus_metric, corpus_metric_value
from kd.tracking.runs import CLASSIC_ML, EXPERIMENT_KIND_TAG, TrackedRun
from kd.training.distillation import DistillOptions
from kd.training.jobs import ModelOptions
from kd.training.loop import TrainingOptions
from kd.tuning.space import KNOWN_KEYS, load_search_space, parse_override, with_fixed
from kd.tuning.study import default_study_name
from tests.conftest import REPO, SMALL_MODEL, one_line_error

MLPROJECT = yaml.safe_load((REPO / "MLproject").read_text())["entry_points"]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


# ----------------------------------------------------------------- options as mlflow run passes them


def test_whole_numbers_accept_a_float_spelling_and_refuse_fractions():
    number = WholeNumber()
    assert number.convert("1.0", None, None) == 1 and number.convert("20", None, None) == 20
    assert number.convert(3, None, None) == 3
    for bad in ("1.5", "ten", ""):
        with pytest.raises(click.BadParameter):
            number.convert(bad, None, None)


def test_a_fractional_epoch_count_is_a_one_line_error(tmp_path):
    result = CliRunner().invoke(cli, ["train", "--task", str(tmp_path), "--epochs", "1.5"])
    message = one_line_error(result)
    assert "--epochs" in message and "1.5" in message


def test_underscored_option_names_are_read_as_dashed(tmp_path, tracking):
    """`mlflow run -P data_dir=DIR` adds `--data_dir DIR`: kd reads it as --data-dir (here the corpus
    is missing there, so the error names the folder it looked in)."""
    result = CliRunner().invoke(cli, ["train", "--task", "absent", "--data_dir", str(tmp_path)])
    assert result.exit_code == 2 and str(tmp_path) in result.output


def test_default_threads_leave_half_the_cores(monkeypatch):
    from kd.cli.options import default_threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert default_threads() == 4
    monkeypatch.setattr("os.cpu_count", lambda: 1)
    assert default_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert default_threads() is None, "the user's OMP_NUM_THREADS is left to torch"


def test_openmp_threads_wait_passively_unless_the_user_chose():
    import subprocess
    import sys

    probe = "import os, kd.cli.main as m; m.cli = lambda **k: print(os.environ['OMP_WAIT_POLICY']); m.main()"
    env = {k: v for k, v in __import__("os").environ.items() if k != "OMP_WAIT_POLICY"}
    for extra, expected in (({}, "PASSIVE"), ({"OMP_WAIT_POLICY": "ACTIVE"}, "ACTIVE")):
        out = subprocess.run([sys.executable, "-c", probe], env={**env, **extra}, capture_output=True, text=True,
                             cwd=REPO, check=True).stdout.strip()
        assert out == expected


# ----------------------------------------------------------------- one source per option set


def option_names(command: str) -> set[str]:
    return {param.name for param in cli.commands[command].params}


MODEL_FIELDS = {f.name for f in fields(ModelOptions)}
TRAINING_FIELDS = {f.name for f in fields(TrainingOptions)}
# DistillOptions field -> the option name the CLI gives it (`--cache`, `--teacher` take run ids).
DISTILL_OPTIONS = {"loss": "loss", "alpha": "alpha", "beta": "beta", "gamma": "gamma", "kappa": "kappa",
                   "tau": "tau", "cache_run": "cache_run", "teacher_runs": "teachers", "unlabelled": "unlabelled",
                   "unlabelled_ratio": "unlabelled_ratio", "allow_eval_overlap": "allow_eval_overlap"}
# MLproject parameters that differ from the option's name: `beta` is logged by kd (the effective
# beta), so the entry point calls it beta_weight; optional ones without a value are undeclared.
UNDECLARED = {"embeddings", "cache_run", "teacher_runs", "unlabelled", "unlabelled_ratio", "allow_eval_overlap"}


def test_cli_options_cover_the_option_dataclasses():
    assert set(DISTILL_OPTIONS) == {f.name for f in fields(DistillOptions)}, "a DistillOptions field has no option"
    for command in ("train", "train-teacher", "distill"):
        assert MODEL_FIELDS | TRAINING_FIELDS <= option_names(command), command
    assert set(DISTILL_OPTIONS.values()) <= option_names("distill")


def test_mlproject_declares_every_option_of_the_dataclasses():
    renamed = {"beta": "beta_weight"}
    for entry_point, groups in (("train", MODEL_FIELDS | TRAINING_FIELDS),
                                ("train_teacher", MODEL_FIELDS | TRAINING_FIELDS),
                                ("distill", MODEL_FIELDS | TRAINING_FIELDS | set(DISTILL_OPTIONS))):
        declared = set(MLPROJECT[entry_point]["parameters"])
        missing = {renamed.get(name, name) for name in groups - UNDECLARED} - declared
        assert not missing, f"{entry_point} lacks {missing}"


def test_search_space_keys_are_the_dataclass_fields():
    assert KNOWN_KEYS == (MODEL_FIELDS - {"embeddings"}) | (TRAINING_FIELDS - {"seed"}) | (
        set(DISTILL_OPTIONS) - {"cache_run", "teacher_runs", "unlabelled", "unlabelled_ratio", "allow_eval_overlap"})


def test_every_entry_point_takes_threads_and_a_workdir_and_logs_no_empty_strings():
    for name, entry_point in MLPROJECT.items():
        parameters = entry_point["parameters"]
        assert parameters["threads"] == {"type": "float", "default": 0}, name
        assert parameters["workdir"] == {"type": "path", "default": "."}, name
        assert "-C {workdir}" in entry_point["command"] and "--threads {threads}" in entry_point["command"], name
        empty = [key for key, spec in parameters.items() if isinstance(spec, dict) and spec.get("default") == ""]
        assert not empty, f"{name}: {empty} would be logged as ''"
        used = set(re.findall(r"{(\w+)}", entry_point["command"]))
        assert used == set(parameters), name


# ----------------------------------------------------------------- tracking


def test_experiments_are_created_as_classic_ml(tracking):
    from mlflow import MlflowClient

    client = MlflowClient(tracking)
    run = TrackedRun.start(client, "fresh", None, {"model_kind": "stm"})
    assert client.get_experiment_by_name("fresh").tags[EXPERIMENT_KIND_TAG] == CLASSIC_ML
    run.finish()
    # One created by someone else (mlflow run, an older kd) is marked when kd first logs into it...
    untagged = client.create_experiment("made-by-mlflow")
    TrackedRun.start(client, "made-by-mlflow", None, {}).finish()
    assert client.get_experiment(untagged).tags[EXPERIMENT_KIND_TAG] == CLASSIC_ML
    # ...while a kind the user chose stays.
    chosen = client.create_experiment("genai", tags={EXPERIMENT_KIND_TAG: "genai_development"})
    TrackedRun.start(client, "genai", None, {}).finish()
    assert client.get_experiment(chosen).tags[EXPERIMENT_KIND_TAG] == "genai_development"


def test_per_corpus_metrics_are_grouped_by_corpus_and_old_names_still_read():
    assert corpus_metric("test_f1", "NCBI-disease") == "NCBI-disease/test_f1"
    assert corpus_metric_value({"NCBI-disease/test_f1": 0.8}, "test_f1", "NCBI-disease") == 0.8
    assert corpus_metric_value({"test_f1/NCBI-disease": 0.7}, "test_f1", "NCBI-disease") == 0.7
    assert corpus_metric_value({"test_f1": 0.7}, "test_f1", "NCBI-disease") is None


def test_system_metrics_are_logged_where_psutil_is_present(tracking):
    pytest.importorskip("psutil")
    from mlflow import MlflowClient

    from kd.tracking.system import SystemMetrics

    client = MlflowClient(tracking)
    run = TrackedRun.start(client, "system", None, {})
    with SystemMetrics(tracking, interval=0.3) as system:
        system.start(run.run_id)
        time.sleep(1.5)
    metrics = client.get_run(run.run_id).data.metrics
    assert "system/cpu_utilization_percentage" in metrics and "system/system_memory_usage_megabytes" in metrics


# ----------------------------------------------------------------- the progress display


def test_ui_links_open_the_run_in_the_classic_view():
    link, serve = ui_link("http://mlflow.lab:5000/", "3", "abc")
    assert link == "http://mlflow.lab:5000/#/experiments/3/runs/abc?workflowType=machine_learning" and serve is None
    link, serve = ui_link("sqlite:///mlflow.db", "1", "abc")
    assert link.startswith("http://127.0.0.1:5000/#/experiments/1/runs/abc")
    assert serve == "mlflow ui --backend-store-uri sqlite:///mlflow.db"


def test_loss_terms_are_epoch_means_with_the_minimised_one_first():
    assert format_terms({"soft": 0.6, "loss": 1.5, "hard": 0.9}, 3) == "loss 0.500 · hard 0.300 · soft 0.200"
    assert format_terms({}, 0) == ""


def test_display_shows_run_epoch_speed_losses_and_devel_f1(tracking):
    from mlflow import MlflowClient

    client = MlflowClient(tracking)
    run = TrackedRun.start(client, "display", "stm-tiny-s1", {})
    run.log_params({"epochs": 2})
    run.log_metrics({"train_tokens": 1000})
    output = io.StringIO()
    console = Console(file=output, force_terminal=True, width=160)
    with TrainingDisplay(client, tracking, live=True, console=console) as display:
        display.on_start(run.run_id)
        display.on_batch(1, 400, {"loss": 2.0, "hard": 1.2})
        display.on_batch(1, 600, {"loss": 1.0, "hard": 0.6})
        display.on_epoch(1, {"devel_f1": 0.5})
        display.on_batch(2, 500, {"loss": 0.5, "hard": 0.3})
        time.sleep(0.3)  # one refresh of the live display
    text = ANSI.sub("", output.getvalue())
    assert f"run {run.run_id} (stm-tiny-s1): http://127.0.0.1:5000/#/experiments/" in text
    assert "epoch 2/2" in text and "tok/s" in text
    assert "loss 0.500 · hard 0.300" in text and "devel F1 50.00 (epoch 1)" in text
    # The run bar counts both epochs' tokens: 1,500 of 2,000 after half of epoch 2.
    assert display.progress.tasks[1].completed == 1500 and display.progress.tasks[1].total == 2000


def test_not_live_prints_nothing(tracking):
    """Redirected stderr (a log, a pipe) gets no display and no run line: scripts read --json."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking)
    run = TrackedRun.start(client, "display", None, {})
    output = io.StringIO()
    with TrainingDisplay(client, tracking, live=False, console=Console(file=output, width=300)) as display:
        display.on_start(run.run_id)
        display.on_batch(1, 10, {"loss": 1.0})
        display.on_epoch(1, {"devel_f1": 0.5})
    assert output.getvalue() == "" and display.run_id == run.run_id


# ----------------------------------------------------------------- kd tune --set


SPACE = "fixed: {loss: logits, epochs: 5}\nparams:\n  alpha: {type: float, low: 0.0, high: 1.0}\n"


def test_set_fixes_a_value_of_the_space_and_names_the_study(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(SPACE)
    space = load_search_space(path)
    overrides = dict([parse_override("epochs=3"), parse_override("word-dim=16")])
    fixed = with_fixed(space, overrides)
    assert fixed.fixed == {"loss": "logits", "epochs": 3, "word_dim": 16}
    assert default_study_name("data/tiny", fixed, overrides) == "tiny-space-epochs3-word_dim16"
    assert default_study_name("data/tiny", space) == "tiny-space"


@pytest.mark.parametrize("text, expected", [
    ("epochs=0", "--set epochs=0: epochs takes an integer of at least 1"),
    ("epochs=2.5", "--set epochs=2.5: epochs takes an integer of at least 1"),
    ("alpha=0.3", "tunes alpha (params.alpha)"),
    ("colour=red", "--set colour=red: unknown option"),
    ("loss=nope", "--set loss=nope: loss takes one of"),
])
def test_set_values_are_checked_against_the_space(tmp_path, text, expected):
    from kd.errors import KdError

    path = tmp_path / "space.yaml"
    path.write_text(SPACE)
    with pytest.raises(KdError, match=re.escape(expected)):
        with_fixed(load_search_space(path), dict([parse_override(text)]))


def test_set_without_a_value_is_refused():
    from kd.errors import KdError

    with pytest.raises(KdError, match="expected NAME=VALUE"):
        parse_override("epochs")


def test_tune_set_is_a_one_line_error_before_any_training(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    result = CliRunner().invoke(cli, ["tune", "--task", "tiny", "--cache", "0" * 32, "--space", str(space),
                                      "--set", "alpha=0.5", "--data-dir", str(tmp_path)])
    assert "tunes alpha" in one_line_error(result)


def test_small_model_options_parse():  # the shared sizes stay valid options of every training command
    for command in ("train", "train-teacher", "distill"):
        names = {opt for param in cli.commands[command].params for opt in param.opts}
        assert set(SMALL_MODEL[::2]) <= names
