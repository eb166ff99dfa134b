"""Errors by field: the library names the field and value; the CLI words it as the option that sets
the field, tuning as the search space's key."""
from __future__ import annotations

import pytest

from kd.cli.one_line_errors import user_message
from kd.errors import FieldError, KdError
from kd.models.device import autocast, resolve_device
from kd.training.distillation import DistillOptions
from kd.models.tagger import TaggerConfig
from kd.training.loop import TrainingOptions


@pytest.mark.parametrize("make, field, library, cli", [
    (lambda: TaggerConfig(output="x"), "output", "output 'x': use softmax or crf", "--output x: use softmax or crf"),
    (lambda: TaggerConfig(task_hidden=0), "task_hidden", "task_hidden 0: must be at least 1",
     "--task-hidden 0: must be at least 1"),
    (lambda: TrainingOptions(learning_rate=0), "learning_rate", "learning_rate 0: must be positive",
     "--learning-rate 0: must be positive"),
    (lambda: DistillOptions(cache_run="c", tau=0), "tau", "tau 0: must be positive", "--tau 0: must be positive"),
    (lambda: autocast(resolve_device("cpu"), "fp8"), "precision", "precision 'fp8': use one of fp32, bf16",
     "--precision fp8: use one of fp32, bf16"),
])
def test_library_names_the_field_and_the_cli_the_option(make, field, library, cli):
    with pytest.raises(FieldError) as raised:
        make()
    assert raised.value.field == field
    assert str(raised.value) == library
    assert user_message(raised.value) == cli


def test_fields_set_by_differently_named_options():
    assert user_message(FieldError("cache_run", "abc", "not a cache run")) == "--cache abc: not a cache run"
    assert user_message(FieldError("teacher_runs", None, "give one")) == "--teacher: give one"
    assert user_message(KdError("plain")) == "plain"


def test_tuning_names_the_search_space_key():
    from kd.tuning.study import TuneJob, student_job

    job = TuneJob(task="tiny", cache_run="c", space="space.yaml")
    with pytest.raises(KdError) as raised:
        student_job(job, {"loss": "kl", "dropout": 1.5}, seed=1, train_splits=["train"], eval_split="devel")
    assert str(raised.value) == "space.yaml: params.dropout 1.5: must be in [0, 1)"
