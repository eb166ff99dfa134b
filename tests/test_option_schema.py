"""kd.option_schema: one definition per option. Its checks against hand values, the losses it knows
against the registry, and a field added to it: seen by the command line, a plan and a search space,
and refused by all three with the same message."""
from __future__ import annotations

import importlib
import sys

import click
import pytest
from click.testing import CliRunner

from kd.errors import FieldError, KdError
from kd.option_schema import LOSS_NAMES, OPTIONS, Option, check_combination, check_value, implied_beta
from tests.test_plan import corpora, tiny_plan, write_plan  # noqa: F401 (corpora: a fixture)


@pytest.mark.parametrize("name, value, expected", [
    ("epochs", 3.0, 3), ("epochs", 3, 3), ("alpha", 1, 1), ("dropout", 0, 0), ("beta", None, None),
    ("train_splits", "train, devel", ["train", "devel"]), ("output", "crf", "crf"), ("clip_norm", 0, 0),
])
def test_good_values_are_kept_integers_made_whole(name, value, expected):
    checked = check_value(name, value)
    assert checked == expected and type(checked) is type(expected)


@pytest.mark.parametrize("name, value, message", [
    ("epochs", 0, "epochs 0: must be at least 1"),
    ("epochs", 2.5, "epochs 2.5: must be a whole number"),
    ("epochs", True, "epochs True: must be a whole number"),
    ("dropout", 1, "dropout 1: must be in [0, 1)"),
    ("learning_rate", 0, "learning_rate 0: must be positive"),
    ("alpha", -0.1, "alpha -0.1: must not be negative"),
    ("alpha", float("nan"), "alpha nan: must be a (finite) number"),
    ("output", "mlp", "output 'mlp': use softmax or crf"),
    ("train_splits", ["train", "dev"], "use a subset of train, devel, test"),
    ("train_splits", ["train", "train"], "use a subset of train, devel, test"),
    ("beta", "half", "beta 'half': must be a (finite) number"),
])
def test_bad_values_name_the_option(name, value, message):
    with pytest.raises(FieldError) as raised:
        check_value(name, value)
    assert raised.value.field == name and message in str(raised.value)


def test_beta_defaults_to_one_minus_alpha_and_a_larger_alpha_needs_one():
    assert implied_beta(0.25, None) == 0.75 and implied_beta(0.25, 2.0) == 2.0
    check_combination({"alpha": 1.0, "beta": None})
    check_combination({"alpha": 1.5, "beta": 0.5})
    with pytest.raises(FieldError, match=r"alpha 1.5: beta defaults to 1 - alpha, here -0.5"):
        check_combination({"alpha": 1.5})


def test_the_schema_knows_the_registered_losses():
    from kd.losses.distill import LOSSES

    assert sorted(LOSS_NAMES) == sorted(LOSSES)


WARMUP = Option("warmup", int, 0, "training", "Epochs of learning-rate warm-up.", low=0)


@pytest.fixture
def schema_with_warmup(monkeypatch):
    """The schema with one more option, and fresh copies of the modules that read it when they load
    (monkeypatch puts the originals back afterwards)."""
    monkeypatch.setitem(OPTIONS, "warmup", WARMUP)
    modules = ("kd.cli.options", "kd.jobs.plan_file", "kd.jobs.teacher_spec", "kd.jobs.plan", "kd.tuning.space")
    for module in modules:
        importlib.import_module(module)  # loaded with the real schema, to be put back afterwards
        monkeypatch.delitem(sys.modules, module)
    return {module: importlib.import_module(module) for module in modules}


def test_an_option_added_to_the_schema_is_read_and_checked_everywhere(schema_with_warmup, corpora, tmp_path):
    cli_options, plan, space = (schema_with_warmup[m] for m in ("kd.cli.options", "kd.jobs.plan", "kd.tuning.space"))

    @click.command()
    @cli_options.training_options
    def command(**options):
        click.echo(f"warmup={options['warmup']}")

    assert "warmup=2" in CliRunner().invoke(command, ["--warmup", "2"]).output
    assert "Epochs of learning-rate warm-up." in CliRunner().invoke(command, ["--help"]).output
    refused_cli = CliRunner().invoke(command, ["--warmup", "-1"])
    assert refused_cli.exit_code == 2

    data = tiny_plan(corpora)
    data["defaults"]["warmup"] = 2
    assert plan.load_plan(write_plan(tmp_path / "plan.yaml", data)).models["SM"].options["warmup"] == 2
    data["defaults"]["warmup"] = -1
    with pytest.raises(KdError) as refused_plan:
        plan.load_plan(write_plan(tmp_path / "plan.yaml", data))

    path = tmp_path / "space.yaml"
    path.write_text("fixed: {loss: kl}\nparams:\n  warmup: {type: int, low: 0, high: 3, step: 1}\n")
    assert space.load_search_space(path).params[0].grid_values() == [0, 1, 2, 3]
    path.write_text("fixed: {warmup: -1}\nparams:\n  alpha: {type: float, low: 0, high: 1}\n")
    with pytest.raises(KdError) as refused_space:
        space.load_search_space(path)

    message = "-1: must not be negative"
    assert f"--warmup {message}" in refused_cli.output
    assert str(refused_plan.value).endswith(f"plan.yaml:{line_of_defaults(tmp_path / 'plan.yaml')}: "
                                            f"defaults.warmup {message}")
    assert str(refused_space.value) == f"{path}: fixed.warmup {message}"


def line_of_defaults(path) -> int:
    return next(n for n, line in enumerate(path.read_text().splitlines(), 1) if "warmup" in line)
