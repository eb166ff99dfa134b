"""The logged model of a multi-task BiLSTM teacher as an MLflow pyfunc (issue 29): it loads (it
refused to before: no task was chosen) and tags with the head its `task` parameter names, the first
corpus's by default; the truth is kd's own tagger of that head."""
from __future__ import annotations

import pytest

from kd.models.inference import SavedTagger
from kd.tracking.logged_models import load_logged_tagger, logged_model_location

SENTENCES = [["aspirin", "for", "fever"], ["the", "patient", "showed", "signs", "of", "cancer", "syndrome"], ["x"]]


@pytest.mark.slow
def test_a_multi_task_model_tags_with_the_head_its_task_parameter_names(shared_teachers, tmp_path):
    import mlflow.pyfunc
    import pandas as pd

    with shared_teachers.open_copy(tmp_path) as uri:
        loaded = mlflow.pyfunc.load_model(logged_model_location(uri, shared_teachers.mtm))
        saved = load_logged_tagger(shared_teachers.mtm, uri)
    assert [(p.name, p.default) for p in loaded.metadata.signature.params] == [("task", "tiny")]
    frame = pd.DataFrame({"tokens": SENTENCES})
    by_task = {task: loaded.predict(frame, params={"task": task}) for task in ("tiny", "other")}
    for task, tags in by_task.items():
        assert tags == SavedTagger(saved, "cpu", task).tag(SENTENCES)
    assert loaded.predict(frame) == by_task["tiny"]
    assert {tag[2:] for s in by_task["other"] for tag in s if tag != "O"} <= {"Disease"}
