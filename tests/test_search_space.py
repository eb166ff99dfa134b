"""Search spaces as YAML: the shipped files, the grid, one-line errors naming file and key, and
`Parameter.suggest` against real Optuna trials."""
from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner

from kd.cli.main import cli
from kd.errors import KdError
from kd.tuning.space import KNOWN_KEYS, Parameter, load_search_space
from kd.tuning.study import TuneJob, make_sampler, student_job
from tests.conftest import REPO

SPACES = REPO / "search_spaces"
SHIPPED = sorted(SPACES.glob("*.yaml"))

optuna.logging.set_verbosity(optuna.logging.WARNING)


def write(tmp_path: Path, text: str, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def load_error(path: Path) -> str:
    with pytest.raises(KdError) as caught:
        load_search_space(path)
    message = str(caught.value)
    assert "\n" not in message.strip(), message
    assert str(path) in message, f"the message does not name the file: {message}"
    return message


# --- the shipped files ---------------------------------------------------------------------------


def test_the_shipped_spaces_are_all_there():
    assert {p.stem for p in SHIPPED} >= {"logits", "intermediate", "soft", "kl", "marginals", "published_grid"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_space_loads_and_makes_a_valid_student(path):
    space = load_search_space(path)
    assert space.name == path.stem and space.path == str(path)
    assert space.params, "a space tunes something"
    assert set(space.fixed) <= KNOWN_KEYS and {p.name for p in space.params} <= KNOWN_KEYS
    assert not set(space.fixed) & {p.name for p in space.params}
    # Each trial's values must make a valid student: sample a few and build the job kd would run.
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    job = TuneJob(task="tiny", cache_run="0" * 32, space=str(path))
    for _ in range(5):
        trial = study.ask()
        values = {**space.fixed, **{p.name: p.suggest(trial) for p in space.params}}
        student = student_job(job, values, seed=1, train_splits=["train"], eval_split="devel")
        assert student.distill.loss == space.fixed["loss"]
        assert student.train_splits == ["train"] and student.eval_split == "devel", "trials never score test"
        study.tell(trial, 0.0)


def test_published_grid_is_the_0_half_1_cube():
    space = load_search_space(SPACES / "published_grid.yaml")
    assert space.grid() == {"alpha": [0.0, 0.5, 1.0], "gamma": [0.0, 0.5, 1.0], "kappa": [0.0, 0.5, 1.0]}
    assert space.fixed["loss"] == "intermediate"
    # The grid sampler visits each of the 27 points once.
    sampler = make_sampler("grid", space, seed=1)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    seen = []

    def objective(trial) -> float:
        seen.append(tuple(p.suggest(trial) for p in space.params))
        return 0.0

    study.optimize(objective, n_trials=40)  # the sampler stops the study when the grid is done
    assert len(seen) == 27
    assert set(seen) == {(a, g, k) for a in (0.0, 0.5, 1.0) for g in (0.0, 0.5, 1.0) for k in (0.0, 0.5, 1.0)}


# --- malformed files: one KdError naming the file and the key -------------------------------------

BAD = {
    "unknown_param": ("params:\n  alpha: {type: float, low: 0, high: 1}\n  lambda: {type: float, low: 0, high: 1}\n",
                      "params.lambda", "unknown option"),
    "unknown_fixed": ("fixed: {loss: logits, epoch: 3}\nparams:\n  alpha: {type: float, low: 0, high: 1}\n",
                      "fixed.epoch", "unknown option"),
    "fixed_and_tuned": ("fixed: {loss: logits, alpha: 0.5}\nparams:\n  alpha: {type: float, low: 0, high: 1}\n",
                        "fixed.alpha", "both fixed and tuned"),
    "low_above_high": ("params:\n  alpha: {type: float, low: 1, high: 0}\n", "params.alpha", "above high"),
    "log_from_zero": ("params:\n  tau: {type: float, low: 0, high: 20, log: true}\n", "params.tau.low", "log"),
    "log_negative": ("params:\n  epochs: {type: int, low: -1, high: 20, log: true}\n", "params.epochs.low", "log"),
    "bad_type": ("params:\n  alpha: {type: double, low: 0, high: 1}\n", "params.alpha.type", "float, int or categorical"),
    "missing_type": ("params:\n  alpha: {low: 0, high: 1}\n", "params.alpha.type", "float, int or categorical"),
    "bound_not_a_number": ("params:\n  alpha: {type: float, low: zero, high: 1}\n", "params.alpha.low", "number"),
    "bound_missing": ("params:\n  alpha: {type: float, low: 0}\n", "params.alpha.high", "number"),
    "bound_is_bool": ("params:\n  alpha: {type: float, low: false, high: 1}\n", "params.alpha.low", "number"),
    "log_not_bool": ("params:\n  tau: {type: float, low: 1, high: 20, log: yes please}\n", "params.tau.log", "true or false"),
    "step_negative": ("params:\n  alpha: {type: float, low: 0, high: 1, step: -0.1}\n", "params.alpha.step", "positive"),
    "missing_choices": ("params:\n  tau: {type: categorical}\n", "params.tau.choices", "non-empty list"),
    "empty_choices": ("params:\n  tau: {type: categorical, choices: []}\n", "params.tau.choices", "non-empty list"),
    "choices_not_list": ("params:\n  tau: {type: categorical, choices: 2}\n", "params.tau.choices", "non-empty list"),
    "param_not_mapping": ("params:\n  alpha: 0.5\n", "params.alpha", "mapping"),
    "params_not_mapping": ("params: [alpha, beta]\n", "params", "mapping"),
    "params_missing": ("fixed: {loss: logits}\n", "params", "mapping"),
    "fixed_not_mapping": ("fixed: [loss]\nparams:\n  alpha: {type: float, low: 0, high: 1}\n", "fixed", "mapping"),
    "unknown_field": ("params:\n  alpha: {type: float, low: 0, high: 1, default: 0.5}\n", "params.alpha", "default"),
    "unknown_top_level": ("fixed: {loss: logits}\nsearch:\n  alpha: {type: float, low: 0, high: 1}\n",
                          "search", "unknown top-level key"),
    "log_and_step": ("params:\n  epochs: {type: int, low: 1, high: 64, log: true, step: 2}\n",
                     "params.epochs", "log and step"),
    "log_and_step_float": ("params:\n  tau: {type: float, low: 1, high: 20, log: true, step: 1}\n",
                           "params.tau", "log and step"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_space_names_file_and_key(tmp_path, case):
    text, key, words = BAD[case]
    path = write(tmp_path, text, f"{case}.yaml")
    message = load_error(path)
    assert f"{path}: {key}:" in message or f"{path}: {key} " in message, message
    assert words in message.removeprefix(str(path)), message


def test_a_file_that_is_not_a_mapping_is_refused(tmp_path):
    for text in ("- alpha\n- beta\n", "just words\n", ""):
        path = write(tmp_path, text)
        message = load_error(path)
        assert "mapping" in message, message


def test_invalid_yaml_names_the_line(tmp_path):
    path = write(tmp_path, "fixed: {loss: logits}\nparams:\n  alpha: {type: float, low: 0, high: 1\n  beta: [\n")
    message = load_error(path)
    assert "not valid YAML" in message
    line = int(message[len(str(path)) + 1:].split(":")[0])
    assert 3 <= line <= 5, message  # the unclosed flow mapping on line 3 (found by the parser a line or two on)
    tabs = write(tmp_path, "params:\n\talpha: {type: float, low: 0, high: 1}\n", "tabs.yaml")
    assert load_error(tabs).startswith(f"{tabs}:2: not valid YAML"), load_error(tabs)


def test_missing_file_is_a_one_line_error(tmp_path):
    message = load_error(tmp_path / "nowhere.yaml")
    assert "not found" in message


# --- grids ---------------------------------------------------------------------------------------


def test_grid_of_a_float_range_needs_a_step(tmp_path):
    space = load_search_space(write(tmp_path, "params:\n  alpha: {type: float, low: 0, high: 1}\n"))
    with pytest.raises(KdError, match="alpha") as caught:
        space.grid()
    assert "step" in str(caught.value)
    with pytest.raises(KdError, match="alpha"):
        make_sampler("grid", space, seed=1)


def test_a_stepped_range_gives_the_stepped_grid(tmp_path):
    space = load_search_space(write(tmp_path, (
        "params:\n"
        "  alpha: {type: float, low: 0, high: 1, step: 0.25}\n"
        "  beta: {type: float, low: 0.0, high: 1.0, step: 0.1}\n"
        "  epochs: {type: int, low: 2, high: 10, step: 4}\n"
        "  tau: {type: categorical, choices: [1, 2, 5]}\n")))
    grid = space.grid()
    assert grid["alpha"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert len(grid["beta"]) == 11, "accumulated rounding must neither drop nor add the end point"
    assert grid["beta"] == pytest.approx([i / 10 for i in range(11)], abs=1e-9)
    assert grid["beta"][-1] == 1.0 and grid["beta"][3] == 0.3
    assert grid["epochs"] == [2, 6, 10] and all(isinstance(v, int) for v in grid["epochs"])
    assert grid["tau"] == [1, 2, 5]
    # The grid sampler accepts it and suggests only grid points.
    study = optuna.create_study(direction="maximize", sampler=make_sampler("grid", space, seed=3))

    def objective(trial) -> float:
        values = {p.name: p.suggest(trial) for p in space.params}
        for name, value in values.items():
            assert any(math.isclose(value, point, abs_tol=1e-9) for point in grid[name]), (name, value)
        return 0.0

    study.optimize(objective, n_trials=10)
    assert len(study.trials) == 10


# --- suggest ---------------------------------------------------------------------------------------

PARAMETERS = [
    Parameter("alpha", "float", low=0.0, high=1.0),
    Parameter("tau", "float", low=1.0, high=20.0, log=True),
    Parameter("beta", "float", low=0.2, high=0.8, step=0.2),
    Parameter("epochs", "int", low=2.0, high=9.0),
    Parameter("batch_size", "int", low=8.0, high=64.0, log=True),
    Parameter("task_hidden", "int", low=16.0, high=64.0, step=16.0),
    Parameter("output", "categorical", choices=("softmax", "crf")),
    Parameter("gamma", "categorical", choices=(0.0, 0.5, 1.0)),
]


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_suggest_returns_values_in_range(sampler):
    study = optuna.create_study(direction="maximize", sampler=(
        optuna.samplers.RandomSampler(seed=0) if sampler == "random"
        else optuna.samplers.TPESampler(seed=0, n_startup_trials=5)))
    for index in range(25):
        trial = study.ask()
        values = {p.name: p.suggest(trial) for p in PARAMETERS}
        assert trial.params == values
        for p in PARAMETERS:
            value = values[p.name]
            if p.kind == "categorical":
                assert value in p.choices
                continue
            assert p.low <= value <= p.high, (p, value)
            if p.kind == "int":
                assert isinstance(value, int)
            if p.step:
                assert math.isclose((value - p.low) / p.step, round((value - p.low) / p.step), abs_tol=1e-9)
        study.tell(trial, float(index % 7))


def test_suggest_on_loaded_shipped_space():
    space = load_search_space(SPACES / "kl.yaml")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=5))
    for _ in range(20):
        trial = study.ask()
        values = {p.name: p.suggest(trial) for p in space.params}
        assert 0 <= values["alpha"] <= 1 and 0 <= values["beta"] <= 1 and 1 <= values["tau"] <= 20
        study.tell(trial, 0.0)


# --- the command line --------------------------------------------------------------------------


@pytest.mark.parametrize("text,key", [
    ("params:\n  alpha: {type: float, low: 2, high: 1}\n", "params.alpha"),
    ("fixed: {loss: logits, alpha: 0.3}\nparams:\n  alpha: {type: float, low: 0, high: 1}\n", "fixed.alpha"),
    ("params:\n  alpha: {type: float, low: 0, high: 1\n", None),
])
def test_kd_tune_with_a_bad_space_exits_2_with_one_line(tmp_path, monkeypatch, text, key):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, text, "bad.yaml")
    result = CliRunner().invoke(cli, ["tune", "--task", "tiny", "--cache", "0" * 32, "--space", str(path),
                                      "--n-trials", "2", "--json"])
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    message = result.output.strip()
    assert len(message.splitlines()) == 1 and message.startswith("error: "), message
    assert str(path) in message
    if key is not None:
        assert f"{path}: {key}:" in message, message
    else:
        assert "not valid YAML" in message and f"{path}:" in message
    assert not (tmp_path / "kd-optuna.log").exists(), "no study is made for a bad space"
