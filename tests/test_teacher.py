"""The multi-task teacher (MTM): `kd train-teacher` end to end, alternating per-task optimizers,
the epoch plan, errors, the MLflow project entry point, determinism and resume.

Every test here shares one MLflow store (a fresh sqlite store costs seconds to create); each test
logs into its own experiment, so what one test finds in the store is only its own runs.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from mlflow import MlflowClient

from kd.cli.main import cli
from kd.data.batching import EncodedDataset
from kd.data.conll import read_conll
from kd.data.corpora import load_split
from kd.data.vocab import build_vocabularies
from kd.errors import KdError
from kd.tracking.logged_models import load_logged_model
from kd.training.evaluate import entity_scores
from kd.models.tagger import TaggerConfig
from kd.training.job_definition import build_tagger
from kd.training.schedule import alternating_plan, supervised_loss, task_optimizers
from tests.conftest import SMALL_MODEL, die_after_epoch, isolated_store, make_corpora, one_line_error, run_kd

TASKS = ("tiny", "other")


@dataclass
class Store:
    uri: str
    data_dir: Path
    root: Path

    @property
    def client(self) -> MlflowClient:
        return MlflowClient(self.uri)

    def runs(self, experiment: str, status: str | None = None):
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            return []
        return self.client.search_runs([found.experiment_id],
                                       filter_string=f"attributes.status = '{status}'" if status else "")

    def losses(self, run_id: str) -> list[float]:
        history = self.client.get_metric_history(run_id, "train_loss")
        return [m.value for m in sorted(history, key=lambda m: m.step)]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    """The conftest corpora (`tiny`: Chemical and Disease, `other`: Disease only) and one isolated
    MLflow store for the module; the working directory is its folder, so checkpoints stay there."""
    root = tmp_path_factory.mktemp("teacher")
    data_dir = make_corpora(root / "corpora")
    with isolated_store(root) as uri:
        yield Store(uri=uri, data_dir=data_dir, root=root)




def teacher_args(store: Store, experiment: str, *extra: str, tasks: str = "tiny,other", epochs: int = 3) -> list[str]:
    return ["train-teacher", "--tasks", tasks, "--data-dir", str(store.data_dir), "--epochs", str(epochs),
            "--batch-size", "16", "--learning-rate", "0.02", *SMALL_MODEL, "--experiment", experiment, "--json",
            *extra]




# ---------------------------------------------------------------------------------------- CLI


@pytest.mark.slow
def test_train_teacher_logs_per_corpus_metrics_and_a_two_head_model(store, tmp_path):
    summary = run_kd(*teacher_args(store, "mtm-e2e", "--sampling", "proportional"))
    client = store.client
    run = client.get_run(summary["run_id"])
    assert run.info.status == "FINISHED"
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    assert tags["model_kind"] == "mtm" and tags["task"] == "tiny,other" and tags["output"] == "softmax"
    assert params["sampling"] == "proportional" and params["corpora"] == "tiny,other"
    for name in ("precision", "recall", "f1"):
        per_corpus = [metrics[f"{corpus}/test_{name}"] for corpus in TASKS]
        assert metrics[f"test_{name}"] == pytest.approx(np.mean(per_corpus), abs=1e-12), name
        for corpus in TASKS:
            assert summary[f"{corpus}/test_{name}"] == pytest.approx(metrics[f"{corpus}/test_{name}"])
    assert metrics["tiny/test_f1"] > 0.3 and metrics["other/test_f1"] > 0.3, "both heads learn in three epochs"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "train_loss")) == [1, 2, 3]

    # The logged model: one shared encoder and two heads, each with its own tag set.
    saved = load_logged_model(summary["run_id"], store.uri)
    assert saved.model.task_names == ["tiny", "other"] and len(saved.model.heads) == 2
    assert saved.model.config.tasks == {"tiny": 5, "other": 3}
    assert not any("Chemical" in tag for tag in saved.vocabularies.tags["other"])
    predictions = {a.path for a in client.list_artifacts(run.info.run_id, "predictions/test")}
    assert predictions == {"predictions/test/tiny.conll", "predictions/test/other.conll"}

    # `kd predict --task other` tags with the other head and reproduces its logged F1 ...
    test_file = store.data_dir / "other" / "test.tsv"
    out = tmp_path / "other.conll"
    result = CliRunner().invoke(cli, ["predict", "--model", summary["run_id"], "--input", str(test_file),
                                      "--task", "other", "--out", str(out)])
    assert result.exit_code == 0, result.output
    gold = read_conll(test_file)
    tagged = [[line.split("\t") for line in block.splitlines()] for block in out.read_text().strip().split("\n\n")]
    assert [tuple(token for token, _ in s) for s in tagged] == [s.tokens for s in gold]
    predicted_tags = [[tag for _, tag in s] for s in tagged]
    assert not any("Chemical" in tag for s in predicted_tags for tag in s)
    assert entity_scores([s.tags for s in gold], predicted_tags).f1 == pytest.approx(metrics["other/test_f1"],
                                                                                        abs=1e-12)
    # ... and without --task a multi-task model says which to choose, in one line.
    result = CliRunner().invoke(cli, ["predict", "--model", summary["run_id"], "--input", str(test_file)])
    message = one_line_error(result)
    assert "--task" in message and "tiny" in message and "other" in message
    result = CliRunner().invoke(cli, ["predict", "--model", summary["run_id"], "--input", str(test_file),
                                      "--task", "nope"])
    assert "nope" in one_line_error(result)


@pytest.mark.slow
def test_train_teacher_on_all_corpora_of_the_data_dir(store):
    summary = run_kd(*teacher_args(store, "mtm-all", tasks="all", epochs=1))
    run = store.client.get_run(summary["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["model_kind"] == "mtm" and run.data.tags["task"] == "other,tiny", "sorted by name"
    assert run.data.params["sampling"] == "uniform"
    for name in ("precision", "recall", "f1"):
        per_corpus = [run.data.metrics[f"{corpus}/test_{name}"] for corpus in ("other", "tiny")]
        assert run.data.metrics[f"test_{name}"] == pytest.approx(np.mean(per_corpus), abs=1e-12)
    assert load_logged_model(summary["run_id"], store.uri).model.task_names == ["other", "tiny"]


@pytest.mark.parametrize("tasks", ["tiny", "tiny,", " tiny , "])
def test_one_corpus_is_a_one_line_error(store, tasks):
    result = CliRunner().invoke(cli, teacher_args(store, "mtm-one", tasks=tasks))
    message = one_line_error(result)
    assert "--tasks" in message and "two corpora" in message
    assert store.runs("mtm-one") == []


@pytest.mark.parametrize("tasks, needle", [
    ("tiny,nope", "nope"),  # a corpus that is not there
    ("tiny,tiny", "given twice"),  # the same corpus twice
    ("tiny,{data_dir}/tiny", "given twice"),  # the same corpus by name and by folder
])
def test_mismatched_corpus_names_are_one_line_errors_and_no_run(store, tasks, needle):
    result = CliRunner().invoke(cli, teacher_args(store, "mtm-bad", tasks=tasks.format(data_dir=store.data_dir)))
    assert needle in one_line_error(result)
    assert store.runs("mtm-bad") == []


# ------------------------------------------------------------------------ alternating training


@pytest.fixture(scope="module")
def datasets(store) -> dict[str, EncodedDataset]:
    sentences = {task: load_split(store.data_dir / task, "train") for task in TASKS}
    vocabularies = build_vocabularies(sentences)
    return {task: EncodedDataset(s, vocabularies, task) for task, s in sentences.items()}


def small_model(datasets, output: str = "softmax"):
    vocabularies = build_vocabularies({task: d.sentences for task, d in datasets.items()})
    options = TaggerConfig(output=output, word_dim=16, char_dim=8, char_hidden=8, shared_hidden=16, task_hidden=16,
                           hidden_dim=16, dropout=0.1)
    model, _ = build_tagger(options, vocabularies, seed=3)
    return model


def shared_parameters(model) -> list[torch.nn.Parameter]:
    return [p for m in (model.word_embedding, model.char_embedding, model.char_lstm, model.shared_lstm)
            for p in m.parameters()]


@pytest.mark.parametrize("output", ["softmax", "crf"])
def test_per_task_state_gives_each_task_its_own_optimizer_over_shared_and_its_head(datasets, output):
    model = small_model(datasets, output)
    optimizers = task_optimizers(model, 0.01, "per-task")
    assert set(optimizers) == set(TASKS)
    assert optimizers["tiny"] is not optimizers["other"]
    shared = {id(p) for p in shared_parameters(model)}
    for task in TASKS:
        owned = [id(p) for group in optimizers[task].param_groups for p in group["params"]]
        assert len(owned) == len(set(owned)), "no parameter twice"
        assert set(owned) == shared | {id(p) for p in model.head(task).parameters()}
        assert all(group["lr"] == 0.01 for group in optimizers[task].param_groups)
    covered = {id(p) for optimizer in optimizers.values() for g in optimizer.param_groups for p in g["params"]}
    assert covered == {id(p) for p in model.parameters()}, "every parameter is trained by some task"


def test_shared_state_is_one_optimizer_over_every_parameter(datasets):
    model = small_model(datasets)
    optimizers = task_optimizers(model, 0.01)
    assert optimizers["tiny"] is optimizers["other"]
    owned = [id(p) for group in optimizers["tiny"].param_groups for p in group["params"]]
    assert sorted(owned) == sorted(id(p) for p in model.parameters())


@pytest.mark.parametrize("state", ["shared", "per-task"])
def test_adam_moments_of_a_shared_parameter_by_hand(datasets, state):
    """A step on tiny, then one on other. Adam's first moment of a shared parameter is
    0.1 * g_other + 0.09 * g_tiny when the moments are shared, 0.1 * g_other in other's own optimizer."""
    model = small_model(datasets)
    model.train()
    optimizers = task_optimizers(model, 0.01, state)
    parameter = model.shared_lstm.forward_lstm.weight_ih_l0
    gradients = {}
    for task in ("tiny", "other"):
        optimizers[task].zero_grad(set_to_none=True)
        torch.manual_seed(0)  # the same dropout masks whatever the state
        supervised_loss(model)(task, datasets[task].batch(np.arange(8)))["loss"].backward()
        gradients[task] = parameter.grad.detach().clone()
        optimizers[task].step()
    expected = 0.1 * gradients["other"] + (0.09 * gradients["tiny"] if state == "shared" else 0)
    assert torch.allclose(optimizers["other"].state[parameter]["exp_avg"], expected, atol=1e-7)


@pytest.mark.parametrize("state", ["shared", "per-task"])
@pytest.mark.parametrize("output", ["softmax", "crf"])
@pytest.mark.parametrize("stepped, idle", [("tiny", "other"), ("other", "tiny")])
def test_a_step_on_one_task_leaves_the_other_head_bit_identical(datasets, output, stepped, idle, state):
    model = small_model(datasets, output)
    optimizers = task_optimizers(model, 0.01, state)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    head_names = {task: {f"heads.{model.task_names.index(task)}.{name}" for name, _ in model.head(task).named_parameters()}
                  for task in TASKS}
    shared_names = set(before) - head_names["tiny"] - head_names["other"]

    model.train()
    batch = datasets[stepped].batch(np.arange(16))
    for optimizer in optimizers.values():
        optimizer.zero_grad(set_to_none=True)
    supervised_loss(model)(stepped, batch)["loss"].backward()
    optimizers[stepped].step()

    after = dict(model.named_parameters())
    for name in head_names[idle]:
        assert torch.equal(after[name], before[name]), f"{name} of the idle head moved"
        assert after[name].grad is None, f"{name} of the idle head got a gradient"
    for name in head_names[stepped]:
        assert not torch.equal(after[name], before[name]), f"{name} of the stepped head did not move"
    for module in ("word_embedding", "char_embedding", "char_lstm", "shared_lstm"):
        assert any(not torch.equal(after[n], before[n]) for n in shared_names if n.startswith(module + ".")), module
    idle_head = set(model.head(idle).parameters())
    assert not [p for p in optimizers[idle].state if p in idle_head], "the idle head has no optimizer state"


def test_a_checkpoint_holds_each_distinct_optimizer_once(datasets):
    from kd.training.loop import distinct_optimizers

    model = small_model(datasets)
    per_task = task_optimizers(model, 0.01, "per-task")
    assert distinct_optimizers(per_task) == per_task
    shared = task_optimizers(model, 0.01, "shared")
    assert distinct_optimizers(shared) == {"tiny": shared["tiny"]}


def test_unknown_optimizer_state_is_refused():
    from kd.training.job_definition import TaggerJob

    with pytest.raises(KdError, match="optimizer_state 'both'"):
        TaggerJob(corpora=["tiny"], optimizer_state="both")


# -------------------------------------------------------------------------------- epoch plan


def plan_datasets(store, sizes: dict[str, int]) -> dict[str, EncodedDataset]:
    sentences = {task: load_split(store.data_dir / task, "train")[:count] for task, count in sizes.items()}
    vocabularies = build_vocabularies(sentences)
    return {task: EncodedDataset(s, vocabularies, task) for task, s in sentences.items()}


def epoch(plan, generator) -> list[tuple[str, list[int]]]:
    return [(task, batch.sentence_ids.tolist()) for task, batch in plan(generator)]


@pytest.mark.parametrize("sampling", ["uniform", "proportional"])
def test_an_epoch_has_as_many_steps_as_all_batches(store, sampling):
    data = plan_datasets(store, {"tiny": 200, "other": 50})  # 20 and 5 batches of 10
    plan = alternating_plan(data, 10, sampling)
    generator = np.random.default_rng(0)
    for _ in range(5):
        steps = epoch(plan, generator)
        assert len(steps) == 25
        for task, ids in steps:
            assert 1 <= len(ids) <= 10 and max(ids) < len(data[task])


def test_sampling_proportional_follows_batch_counts_and_uniform_is_even(store):
    data = plan_datasets(store, {"tiny": 200, "other": 50})  # 20 and 5 batches of 10
    counts = {}
    for sampling in ("proportional", "uniform"):
        plan = alternating_plan(data, 10, sampling)
        generator = np.random.default_rng(1)
        counts[sampling] = Counter(task for _ in range(200) for task, _ in plan(generator))
        assert sum(counts[sampling].values()) == 200 * 25
    # 5000 draws: the binomial standard deviation of a share is below 0.007.
    assert counts["proportional"]["tiny"] / 5000 == pytest.approx(0.8, abs=0.03)
    assert counts["uniform"]["tiny"] / 5000 == pytest.approx(0.5, abs=0.03)


def test_uniform_sampling_cycles_the_small_corpus_through_reshuffled_batches(store):
    """A corpus drawn more often than it has batches starts over on a fresh shuffle: within an
    epoch, each pass over it has every sentence exactly once."""
    data = plan_datasets(store, {"tiny": 200, "other": 50})  # 20 and 5 batches of 10
    plan = alternating_plan(data, 10, "uniform")
    generator = np.random.default_rng(2)
    passes = 0
    for _ in range(4):
        seen = [i for task, ids in epoch(plan, generator) if task == "other" for i in ids]
        for start in range(0, len(seen), 50):
            chunk = seen[start: start + 50]
            assert len(set(chunk)) == len(chunk), "no sentence twice within a pass"
            if len(chunk) == 50:
                assert sorted(chunk) == list(range(50))
                passes += 1
    assert passes >= 4, "about 12 of the 25 steps of an epoch draw the 5-batch corpus"


def test_one_task_yields_each_batch_once(store):
    data = plan_datasets(store, {"tiny": 195})
    plan = alternating_plan(data, 16, "uniform")
    generator = np.random.default_rng(0)
    for _ in range(3):
        steps = epoch(plan, generator)
        assert len(steps) == 13 and {task for task, _ in steps} == {"tiny"}
        assert sorted(i for _, ids in steps for i in ids) == list(range(195))


@pytest.mark.parametrize("sampling", ["uniform", "proportional"])
def test_same_seed_same_plan(store, sampling):
    data = plan_datasets(store, {"tiny": 200, "other": 50})
    plan = alternating_plan(data, 10, sampling)
    first, second = np.random.default_rng(7), np.random.default_rng(7)
    runs = [[epoch(plan, g) for _ in range(3)] for g in (first, second)]
    assert runs[0] == runs[1]
    assert runs[0][0] != runs[0][1], "each epoch draws anew"
    assert epoch(plan, np.random.default_rng(8)) != runs[0][0]


# ------------------------------------------------------------------------- MLflow project


# ----------------------------------------------------------------- determinism and resume


PER_CORPUS = [f"{corpus}/test_{name}" for name in ("precision", "recall", "f1") for corpus in TASKS]


@pytest.fixture(scope="module")
def straight(store) -> dict:
    return run_kd(*teacher_args(store, "mtm-straight", "--output", "crf", "--sampling", "proportional"))


@pytest.mark.slow
def test_same_seed_same_teacher_bit_for_bit(store, straight):
    again = run_kd(*teacher_args(store, "mtm-again", "--output", "crf", "--sampling", "proportional"))
    assert {k: again[k] for k in PER_CORPUS} == {k: straight[k] for k in PER_CORPUS}
    assert again["test_f1"] == straight["test_f1"]
    assert store.losses(again["run_id"]) == store.losses(straight["run_id"])
    other_seed = run_kd(*teacher_args(store, "mtm-seed2", "--output", "crf", "--sampling", "proportional",
                                      "--seed", "2"))
    assert store.losses(other_seed["run_id"]) != store.losses(straight["run_id"])


@pytest.mark.slow
def test_interrupted_teacher_resumes_to_the_same_result(store, straight, monkeypatch):
    die_after_epoch(monkeypatch, 2)
    result = CliRunner().invoke(cli, teacher_args(store, "mtm-resume", "--output", "crf", "--sampling",
                                                  "proportional"))
    assert result.exit_code != 0
    interrupted = store.runs("mtm-resume", status="KILLED")
    assert len(interrupted) == 1
    run_id = interrupted[0].info.run_id
    checkpoint = Path(interrupted[0].data.tags["checkpoint"])
    assert checkpoint.is_file()
    from kd.training.loop import TrainingState

    state = TrainingState.load(checkpoint)
    assert set(state.optimizers) == {"tiny"}, "the one optimizer the tasks share is checkpointed once"
    monkeypatch.undo()  # training no longer dies

    resumed = run_kd("train-teacher", "--resume", run_id, "--json")
    assert resumed["run_id"] == run_id
    assert {k: resumed[k] for k in PER_CORPUS} == {k: straight[k] for k in PER_CORPUS}
    assert store.losses(run_id) == store.losses(straight["run_id"])
    run = store.client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["model_kind"] == "mtm"
    assert not checkpoint.exists()
