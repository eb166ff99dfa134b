"""What a user sees around the commands (issue 15): option parsing as `mlflow run` passes it, one
source per option set, the MLproject's parameters, the MLflow UI's experiment kind and logged model,
per-corpus metric names, system metrics, the progress display and `kd tune --set`."""
from __future__ import annotations

import io
import re
import time
from dataclasses import MISSING, fields

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
from kd.option_schema import OPTIONS, names_of
from kd.training.distillation import DistillOptions
from kd.training.job_definition import RunPlan
from kd.models.tagger import TaggerConfig
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
    # The function's own module (another test may have imported kd's modules afresh).
    monkeypatch.setitem(default_threads.__globals__, "usable_cores", lambda: 8)
    assert default_threads() == 4
    monkeypatch.setitem(default_threads.__globals__, "usable_cores", lambda: 1)
    assert default_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert default_threads() is None, "the user's OMP_NUM_THREADS is left to torch"


def test_training_threads_follow_the_load_unless_the_user_chose(monkeypatch):
    import torch

    from kd.cli.options import training_threads
    from kd.training.threads import LoadFollowingThreads

    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        for cores, ceiling in ((2, 2), (1, 1), (16, 8), (3, 2)):
            monkeypatch.setitem(training_threads.__globals__, "usable_cores", lambda cores=cores: cores)
            hooks = training_threads(0)
            assert isinstance(hooks, LoadFollowingThreads) and (hooks.cores, hooks.ceiling) == (cores, ceiling)
            assert torch.get_num_threads() == 1, "one thread until the load is known"
        hooks = training_threads(3)
        assert not isinstance(hooks, LoadFollowingThreads) and torch.get_num_threads() == 3
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        assert not isinstance(training_threads(0), LoadFollowingThreads)
    finally:
        torch.set_num_threads(before)


def test_kd_leaves_the_openmp_wait_policy_to_the_user():
    """libgomp's own waiting (a short spin, then sleep) is what makes 2 threads pay alone; beside a busy
    process the training count drops to one thread instead (kd.training.threads)."""
    import subprocess
    import sys

    probe = "import os, kd.cli.main as m; m.cli = lambda **k: print(os.environ.get('OMP_WAIT_POLICY')); m.main()"
    env = {k: v for k, v in __import__("os").environ.items() if k != "OMP_WAIT_POLICY"}
    for extra, expected in (({}, "None"), ({"OMP_WAIT_POLICY": "PASSIVE"}, "PASSIVE")):
        out = subprocess.run([sys.executable, "-c", probe], env={**env, **extra}, capture_output=True, text=True,
                             cwd=REPO, check=True).stdout.strip()
        assert out == expected


def test_kd_exits_with_its_code_its_output_and_its_atexit_handlers(tmp_path):
    """main() ends the process without the interpreter's teardown (kd.cli.main.exit_without_teardown):
    the exit code, unflushed output and atexit handlers must survive it."""
    import subprocess
    import sys

    marker = tmp_path / "atexit.txt"
    for body, code in (("sys.exit(3)", 3), ("None", 0), ("sys.exit('a message')", 1)):
        probe = (f"import atexit, sys, kd.cli.main as m; atexit.register(lambda: open({str(marker)!r}, 'a').write('ran'));"
                 f" sys.stdout.write('unflushed'); m.cli = lambda **k: {body}; m.main()")
        result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO)
        assert (result.returncode, result.stdout) == (code, "unflushed")
        assert marker.read_text() == "ran"
        marker.unlink()
    assert "a message" in result.stderr


# ----------------------------------------------------------------- one source per option set


def option_names(command: str) -> set[str]:
    return {param.name for param in cli.commands[command].params}


# Each training command and entry point: the schema's option groups it takes (kd.option_schema).
GROUPS = {"train": ("model", "training", "splits"), "train-teacher": ("model", "training", "splits", "schedule"),
          "distill": ("model", "training", "splits", "distill")}
# The option dataclass of each group.
HOLDERS = {"model": TaggerConfig, "training": TrainingOptions, "splits": RunPlan, "schedule": RunPlan,
           "distill": DistillOptions}


def field_default(cls, name: str):
    [field] = [f for f in fields(cls) if f.name == name]
    return field.default_factory() if field.default_factory is not MISSING else field.default


def test_option_dataclasses_hold_the_schema_options_with_its_defaults():
    for group, cls in HOLDERS.items():
        for name in names_of(group):
            assert field_default(cls, name) == OPTIONS[name].default, (cls.__name__, name)


def test_cli_options_are_the_schema_options():
    for command, groups in GROUPS.items():
        params = {param.name: param for param in cli.commands[command].params}
        for name in names_of(*groups):
            option, param = OPTIONS[name], params[name]
            default = ",".join(option.default) if option.kind is list else option.default
            assert param.default == default and param.help == option.help, (command, name)
            assert param.opts == ["--" + name.replace("_", "-")], (command, name)


def test_mlproject_parameters_are_the_schema_options():
    """Hand-written, so that merges stay simple: each option with its name, type and default; one
    whose default is "use the default" (None) is left undeclared, so that `mlflow run` logs nothing
    for it (kd logs the value it used)."""
    for command, groups in GROUPS.items():
        entry_point = MLPROJECT[command.replace("-", "_")]
        declared = entry_point["parameters"]
        for name in names_of(*groups):
            option = OPTIONS[name]
            if option.default is None:
                assert name not in declared and "{" + name + "}" not in entry_point["command"], (command, name)
                continue
            spec = declared[name]
            expected = ",".join(option.default) if option.kind is list else option.default
            assert spec["type"] == ("float" if option.kind in (int, float) else "string"), (command, name)
            assert spec["default"] == expected, (command, name, spec["default"])
            assert f"--{name.replace('_', '-')} {{{name}}}" in entry_point["command"], (command, name)
        others = set(declared) - set(names_of(*groups))
        assert others <= {"workdir", "threads", "device", "task", "tasks"}, (command, others)


def test_search_space_keys_are_the_tunable_options():
    assert KNOWN_KEYS == {"output", "word_dim", "char_dim", "char_hidden", "shared_hidden", "task_hidden", "hidden_dim",
                          "dropout", "epochs", "batch_size", "learning_rate", "clip_norm", "precision", "loss", "alpha",
                          "beta", "gamma", "kappa", "tau", "unlabelled_ratio"}


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


def test_a_resumed_run_shows_its_last_devel_f1_and_the_end_says_what_follows(tracking):
    from mlflow import MlflowClient

    client = MlflowClient(tracking)
    run = TrackedRun.start(client, "display", "stm-tiny-s1", {})
    run.log_params({"epochs": 3})
    run.log_metrics({"train_tokens": 1000})
    run.log_metrics({"devel_f1": 0.42}, step=1)  # the epoch done before the run was stopped
    output = io.StringIO()
    with TrainingDisplay(client, tracking, live=True, console=Console(file=output, force_terminal=True,
                                                                          width=160)) as display:
        display.on_start(run.run_id)
        display.on_batch(2, 500, {"loss": 1.0})  # resumed at epoch 2
        time.sleep(0.3)
        assert "devel F1 42.00 (epoch 1)" in ANSI.sub("", output.getvalue())
        display.on_epoch(2, {"devel_f1": 0.5})
        display.on_batch(3, 500, {"loss": 1.0})
        display.on_epoch(3, {"devel_f1": 0.6})
        time.sleep(0.3)
    text = ANSI.sub("", output.getvalue())
    assert "scoring, logging" in text and "devel F1 60.00 (epoch 3)" in text


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


def test_set_fixes_the_unlabelled_ratio_as_the_help_says(tmp_path):
    """`kd tune --set unlabelled_ratio=R` (its help and kd.tuning.study say so) was refused as an
    unknown option: a ratio is a value a space may fix or tune, unlike the text file itself."""
    from kd.errors import KdError
    from kd.tuning.study import TuneJob, student_job

    path = tmp_path / "space.yaml"
    path.write_text(SPACE)
    fixed = with_fixed(load_search_space(path), dict([parse_override("unlabelled_ratio=0.5")]))
    assert fixed.fixed["unlabelled_ratio"] == 0.5
    text = tmp_path / "text.txt"
    text.write_text("a b\n")
    job = TuneJob(task="tiny", cache_run="c", space=str(path), unlabelled=str(text))
    assert student_job(job, fixed.fixed, seed=1, train_splits=["train"], eval_split="devel").distill.unlabelled_ratio == 0.5
    without_text = TuneJob(task="tiny", cache_run="c", space=str(path))
    with pytest.raises(KdError, match="params.unlabelled_ratio 0.5: applies only with unlabelled text"):
        student_job(without_text, fixed.fixed, seed=1, train_splits=["train"], eval_split="devel")
    with pytest.raises(KdError, match=re.escape("--set unlabelled_ratio 0: must be positive")):
        with_fixed(load_search_space(path), dict([parse_override("unlabelled_ratio=0")]))


@pytest.mark.parametrize("text, expected", [
    ("epochs=0", "--set epochs 0: must be at least 1"),
    ("epochs=2.5", "--set epochs 2.5: must be a whole number"),
    ("alpha=0.3", "tunes alpha (params.alpha)"),
    ("colour=red", "--set colour=red: unknown option"),
    ("loss=nope", "--set loss nope: use one of"),
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


def test_every_compare_option_is_reachable_through_mlflow_run():
    """Declared, or optional without a default and listed in MLproject's header (`-P name=value`)."""
    header = (REPO / "MLproject").read_text().split("name: kd")[0]
    declared = set(MLPROJECT["compare"]["parameters"])
    spelled = {param.opts[0].lstrip("-").replace("-", "_") for param in cli.commands["compare"].params}
    for name in spelled - {"json", "progress", "no_progress"}:
        assert name in declared or f"-P {name}=" in header, f"compare --{name.replace('_', '-')} is not reachable"


def test_compare_flags_take_the_values_mlflow_run_passes(tracking, tmp_path):
    for command in (f"compare --experiment none --drop-incomplete {value}" for value in ("true", "false")):
        result = CliRunner().invoke(cli, command.split())
        assert result.exit_code == 2 and "--experiment none: no such experiment" in result.output, result.output
    result = CliRunner().invoke(cli, "compare --experiment none --drop-incomplete maybe".split())
    assert result.exit_code == 2 and "'maybe' is not a valid boolean" in result.output
