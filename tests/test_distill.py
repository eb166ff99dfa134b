"""`kd distill` end to end: a small multi-task teacher on `tiny` and `other`, its cache, and
single-task students learning from the cache or from the live teacher, against a throwaway
MLflow store shared by the module (the teacher and cache are made once)."""
from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from mlflow import MlflowClient

from kd.cli.main import cli
from tests.conftest import SMALL_MODEL, die_after_epoch, make_corpora, one_line_error, run_kd, write_corpus

# Every test here trains students through the CLI.
pytestmark = pytest.mark.slow

TRAINING = ["--batch-size", "16", "--learning-rate", "0.02"]
TEACHER_HIDDEN = 16  # SMALL_MODEL's --task-hidden and --shared-hidden




def run_kd_failing(*args: str) -> str:
    """A `kd` command expected to be refused: exit 2 and one line `error: ...`."""
    return one_line_error(CliRunner().invoke(cli, [str(a) for a in args]))


@dataclass
class World:
    root: Path
    data_dir: Path
    uri: str
    teacher: str  # run id of the teacher (MTM on tiny, other)
    cache: str  # run id of its float32 cache of every layer
    teacher_parameters: int  # parameters the teacher uses for tiny

    @property
    def client(self) -> MlflowClient:
        return MlflowClient(self.uri)

    def distill_args(self, *extra: str, epochs: int = 1, source: tuple[str, ...] | None = None) -> list[str]:
        return ["distill", "--task", "tiny", *(source or ("--cache", self.cache)), "--data-dir", str(self.data_dir),
                "--epochs", str(epochs), *TRAINING, *SMALL_MODEL, "--json", *extra]

    def history(self, run_id: str, metric: str) -> list[float]:
        return [m.value for m in sorted(self.client.get_metric_history(run_id, metric), key=lambda m: m.step)]


@pytest.fixture(scope="module")
def world(tmp_path_factory, shared_teachers):
    """The session's multi-task teacher (tiny, other; trained with TRAINING) and its cache of every layer."""
    root = tmp_path_factory.mktemp("distill")
    data_dir = make_corpora(root / "corpora")
    with shared_teachers.open_copy(root) as uri:
        from kd.cache.teachers import load_teacher

        loaded = load_teacher(shared_teachers.mtm, MlflowClient(uri), uri, torch.device("cpu"))
        assert loaded.model.task_names == ["tiny", "other"]
        yield World(root=root, data_dir=data_dir, uri=uri, teacher=shared_teachers.mtm, cache=shared_teachers.mtm_cache,
                    teacher_parameters=loaded.model.num_parameters("tiny"))


@pytest.fixture(scope="module")
def logits_only_cache(world) -> str:
    return run_kd("cache-logits", "--teacher", world.teacher, "--tasks", "tiny", "--data-dir", world.data_dir,
                  "--layers", "logits", "--json")["run_id"]


# loss -> (extra options, the terms it logs, weights (alpha, beta, gamma, kappa, tau))
LOSS_CASES = {
    "logits": ([], ["hard", "logits_mse"], (0.5, 0.5, 0.0, 0.0, 1.0)),
    "intermediate": (["--gamma", "0.3", "--kappa", "0.2"], ["hard", "logits_mse", "task_mse", "shared_mse"],
                     (0.5, 0.5, 0.3, 0.2, 1.0)),
    "soft": (["--tau", "2", "--alpha", "0.25"], ["hard", "soft_ce"], (0.25, 0.75, 0.0, 0.0, 2.0)),
    "kl": (["--beta", "0.8"], ["hard", "kl"], (0.5, 0.8, 0.0, 0.0, 1.0)),
    "marginals": ([], ["hard", "marginals_ce"], (0.5, 0.5, 0.0, 0.0, 1.0)),
}
TERM_WEIGHT = {"hard": 0, "logits_mse": 1, "soft_ce": 1, "kl": 1, "marginals_ce": 1, "task_mse": 2, "shared_mse": 3}


def check_student_run(world: World, summary: dict, loss: str, terms: list[str], weights, epochs: int,
                      output: str = "softmax", cache: str | None = None,
                      weight_params=("alpha", "beta", "gamma", "kappa", "tau")):
    """Everything a finished student run logs: tags, the weights as params, every loss term per
    epoch, the final scores, parameter counts and artifacts."""
    client = world.client
    run = client.get_run(summary["run_id"])
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert tags["model_kind"] == "student" and tags["task"] == "tiny" and tags["loss"] == loss
    assert tags["output"] == output
    assert tags["cache_run"] == (world.cache if cache is None else cache)
    assert tags["teacher_runs"] == world.teacher and tags["ensemble"] == "single"
    assert tags["model_name"].startswith(f"student-{loss}-") and len(tags["model_id"]) == 12
    assert '"teacher_output":"softmax"' in tags["model_definition"]
    params = run.data.params
    for name, expected in zip(("alpha", "beta", "gamma", "kappa", "tau"), weights):
        if name in weight_params:
            assert float(params[name]) == pytest.approx(expected), name
    assert params["loss"] == loss
    metrics = run.data.metrics
    logged_train = {name for name in metrics if name.startswith("train_") and name != "train_tokens"}
    assert logged_train == {"train_loss", *(f"train_{t}" for t in terms)}
    histories = {t: world.history(run.info.run_id, f"train_{t}") for t in ["loss", *terms]}
    for name, values in histories.items():
        assert len(values) == epochs and all(math.isfinite(v) for v in values), name
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, f"train_{name}"))
        assert steps == list(range(1, epochs + 1)), name
    # Epoch means are linear: the mean loss is the weighted sum of the mean terms.
    for epoch in range(epochs):
        total = sum(weights[TERM_WEIGHT[t]] * histories[t][epoch] for t in terms)
        assert histories["loss"][epoch] == pytest.approx(total, rel=1e-4)
    for metric in ("test_precision", "test_recall", "test_f1"):
        assert metrics[metric] == pytest.approx(summary[metric])
        assert 0.0 <= summary[metric] <= 1.0
    assert metrics["num_parameters"] > 0
    assert metrics["teacher_parameters"] == world.teacher_parameters
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.json", "report.json", "predictions", "loss_terms.png"} <= artifacts
    assert [o.model_id for o in client.get_run(run.info.run_id).outputs.model_outputs], "a logged model"
    # The teacher-quality check: the teacher's test F1 on tiny against the STMs of tiny in the
    # experiment (earlier tests of this module train some), or against this student without them.
    teacher_f1 = client.get_run(world.teacher).data.metrics["tiny/test_f1"]
    stms = [r.data.metrics["test_f1"] for r in client.search_runs([run.info.experiment_id])
            if r.data.tags.get("model_kind") == "stm" and r.info.status == "FINISHED"]
    reference = sum(stms) / len(stms) if stms else metrics["test_f1"]
    assert metrics["teacher_f1"] == pytest.approx(teacher_f1)
    assert tags["teacher_weaker"] == str(teacher_f1 < reference).lower()
    assert ("teacher_warning" in tags) == (teacher_f1 < reference)
    return run


@pytest.mark.parametrize("loss", list(LOSS_CASES))
def test_each_loss_trains_a_student_from_the_cache(world, loss):
    extra, terms, weights = LOSS_CASES[loss]
    summary = run_kd(*world.distill_args("--loss", loss, *extra, epochs=2))
    check_student_run(world, summary, loss, terms, weights, epochs=2)


def test_a_teacher_below_the_single_task_models_is_warned_about(world):
    """An STM of tiny scoring 1.0 in the student's experiment: the teacher is below it, and the run says so."""
    client = world.client
    experiment = client.create_experiment("teacher-check")
    stm = client.create_run(experiment, tags={"model_kind": "stm", "task": "tiny"})
    client.log_metric(stm.info.run_id, "test_f1", 1.0)
    client.set_terminated(stm.info.run_id)
    result = CliRunner().invoke(cli, [str(a) for a in world.distill_args("--experiment", "teacher-check")])
    assert result.exit_code == 0, result.output
    run_id = [r for r in client.search_runs([experiment]) if r.data.tags.get("model_kind") == "student"][0].info.run_id
    tags = client.get_run(run_id).data.tags
    assert tags["loss"] == "kl", "without --loss a student learns with kl (issue 11)"
    teacher_f1 = client.get_run(world.teacher).data.metrics["tiny/test_f1"]
    assert tags["teacher_weaker"] == "true"
    assert tags["teacher_warning"] == (f"warning: the teacher's test F1 on tiny is {100 * teacher_f1:.2f}, below "
                                       f"the single-task models' mean in this experiment (100.00): "
                                       f"distilling from it is unlikely to help")
    assert tags["teacher_warning"] in result.stderr


def test_alpha_one_beta_zero_is_exactly_single_task_training(world):
    epochs = 2
    stm = run_kd("train", "--task", "tiny", "--data-dir", world.data_dir, "--epochs", epochs, *TRAINING, *SMALL_MODEL,
                 "--json")
    student = run_kd(*world.distill_args("--loss", "logits", "--alpha", "1", "--beta", "0", epochs=epochs))
    assert world.client.get_run(stm["run_id"]).data.tags["model_kind"] == "stm"
    assert student["test_f1"] == stm["test_f1"]
    assert student["test_precision"] == stm["test_precision"]
    stm_losses = world.history(stm["run_id"], "train_loss")
    assert len(stm_losses) == epochs
    assert world.history(student["run_id"], "train_loss") == stm_losses
    assert world.history(student["run_id"], "train_hard") == stm_losses
    # The logits term is still logged, though it does not train.
    assert all(v > 0 for v in world.history(student["run_id"], "train_logits_mse"))
    # The same predictions, token for token.
    predictions = []
    for run_id in (stm["run_id"], student["run_id"]):
        local = world.client.download_artifacts(run_id, "predictions/test.conll", str(world.root / f"pred-{run_id}"))
        predictions.append(Path(local).read_text())
    assert predictions[0] == predictions[1]


def test_cache_and_live_teacher_give_the_same_targets_and_losses(world):
    """Library level: the same student (built by the assembler), the same batches, targets from the
    cache and from the live teacher: equal targets and equal loss terms for every loss."""
    from kd.cache.knowledge import TeacherKnowledge
    from kd.cli.options import tracking_client
    from kd.data.batching import bucketed_batches
    from kd.training.assemble import assemble
    from kd.training.distillation import DistillOptions
    from kd.models.tagger import TaggerConfig
    from kd.training.job_definition import TaggerJob, load_task

    client = tracking_client()
    device = torch.device("cpu")
    splits = ["train", "devel"]
    sentences = load_task("tiny", world.data_dir, splits).sentences(splits)
    all_layers = ["logits", "task", "shared", "marginals"]
    runs = {"cache": {"cache_run": world.cache}, "live": {"teacher_runs": [world.teacher]}}

    knowledge = {kind: TeacherKnowledge.gather(DistillOptions(**run), splits, client, "tiny", device)
                 for kind, run in runs.items()}
    sources = {kind: known.source(sentences, splits, all_layers, device) for kind, known in knowledge.items()}
    cached, live = knowledge["cache"], knowledge["live"]
    assert cached.tags == live.tags and cached.parameters == live.parameters == world.teacher_parameters
    assert cached.widths == live.widths == {"logits": len(live.tags), "task": 2 * TEACHER_HIDDEN,
                                            "shared": 2 * TEACHER_HIDDEN, "marginals": len(live.tags)}
    assert (cached.cache_run, live.cache_run) == (world.cache, None)
    assert cached.teacher_runs == live.teacher_runs == [world.teacher]
    assert cached.ensemble == live.ensemble == "single"
    assert cached.teacher_outputs == live.teacher_outputs == ["softmax"]

    # A smaller student, so the projections are in play too.
    model = TaggerConfig(word_dim=16, char_dim=8, char_hidden=8, shared_hidden=6, task_hidden=5, hidden_dim=16,
                         dropout=0.1)

    def student(kind: str, loss: str, weights=(0.5, 0.5, 0.0, 0.0, 1.0)):
        alpha, beta, gamma, kappa, tau = weights
        distill = DistillOptions(loss=loss, alpha=alpha, beta=beta, gamma=gamma, kappa=kappa, tau=tau, **runs[kind])
        assembly = assemble(TaggerJob(corpora=["tiny"], data_dir=str(world.data_dir), model=model, distill=distill,
                                      device="cpu"), knowledge[kind])
        assembly.trained.eval()
        return assembly

    reference = student("cache", "intermediate", LOSS_CASES["intermediate"][2])
    assert set(reference.trained.projections) == {"task", "shared"}
    dataset = reference.train_data["tiny"]
    first_batches = bucketed_batches(dataset.lengths, 16, np.random.default_rng(1))
    batches = [dataset.batch(ids) for ids in (first_batches[0], first_batches[-1])]
    for batch in batches:
        targets = {kind: source(batch) for kind, source in sources.items()}
        for layer in all_layers:
            assert targets["cache"][layer].shape == targets["live"][layer].shape
            assert targets["cache"][layer].shape[:2] == batch.mask.shape
            # Equal at real tokens; at padding the cache holds zeros and the live teacher whatever
            # it computes there, which no loss looks at.
            torch.testing.assert_close(targets["cache"][layer][batch.mask], targets["live"][layer][batch.mask],
                                       rtol=1e-5, atol=1e-6)
            assert torch.all(targets["cache"][layer][~batch.mask] == 0)

    for loss, (_, names, weights) in LOSS_CASES.items():
        students = {kind: student(kind, loss, weights) for kind in runs}
        for batch in batches:
            with torch.no_grad():
                results = {kind: assembly.loss("tiny", batch) for kind, assembly in students.items()}
            assert set(results["cache"]) == set(results["live"]) == {"loss", *names}
            for name in results["cache"]:
                torch.testing.assert_close(results["cache"][name], results["live"][name], rtol=1e-5, atol=1e-6)


def test_student_from_the_live_teacher_matches_the_cache_on_the_cli(world):
    extra, terms, weights = LOSS_CASES["intermediate"]
    live = run_kd(*world.distill_args("--loss", "intermediate", *extra, source=("--teacher", world.teacher)))
    run = check_student_run(world, live, "intermediate", terms, weights, epochs=1, cache="")
    assert run.data.params["cache_run"] == "" and run.data.params["teacher_runs"] == world.teacher
    cached = run_kd(*world.distill_args("--loss", "intermediate", *extra))
    for name in ["loss", *terms]:
        assert world.history(live["run_id"], f"train_{name}") == pytest.approx(
            world.history(cached["run_id"], f"train_{name}"), rel=1e-5), name


@pytest.mark.parametrize("loss", ["logits", "marginals"])
def test_crf_student(world, loss):
    extra, terms, weights = LOSS_CASES[loss]
    summary = run_kd(*world.distill_args("--loss", loss, "--output", "crf", *extra))
    check_student_run(world, summary, loss, terms, weights, epochs=1, output="crf")


SMALLER = ["--task-hidden", "6", "--shared-hidden", "5", "--gamma", "0.5", "--kappa", "0.5"]


@pytest.fixture(scope="module")
def smaller_student(world) -> dict:
    """An uninterrupted 2-epoch run of a student smaller than its teacher (intermediate loss)."""
    return run_kd(*world.distill_args("--loss", "intermediate", *SMALLER, "--output", "crf", epochs=2))


def test_smaller_student_learns_intermediate_layers_through_projections(world, smaller_student):
    from kd.tracking.logged_models import load_logged_model

    run = check_student_run(world, smaller_student, "intermediate", LOSS_CASES["intermediate"][1],
                            (0.5, 0.5, 0.5, 0.5, 1.0), epochs=2, output="crf")
    metrics = run.data.metrics
    assert metrics["num_parameters"] < metrics["teacher_parameters"]
    assert run.data.params["task_hidden"] == "6" and run.data.params["shared_hidden"] == "5"
    # The projections train with the student but are not part of the logged model.
    saved = load_logged_model(smaller_student["run_id"], world.uri)
    assert (saved.model.config.task_hidden, saved.model.config.shared_hidden) == (6, 5)
    assert not any("projection" in name for name in saved.model.state_dict())
    assert saved.model.num_parameters() == run.data.metrics["num_parameters"]
    # The MSE to the teacher's (wider) states goes down as the projections learn.
    task_mse = world.history(smaller_student["run_id"], "train_task_mse")
    assert task_mse[-1] < task_mse[0]


def test_resumed_student_reaches_the_same_result(world, smaller_student, monkeypatch):
    """A student killed after epoch 1 of 2 and resumed ends exactly where the uninterrupted one ends
    (projections and their optimizer state included)."""
    die_after_epoch(monkeypatch, 1)
    args = world.distill_args("--loss", "intermediate", *SMALLER, "--output", "crf", "--experiment", "resume", epochs=2)
    result = CliRunner().invoke(cli, args)
    assert result.exit_code != 0
    client = world.client
    interrupted = client.search_runs([client.get_experiment_by_name("resume").experiment_id],
                                     filter_string="attributes.status = 'KILLED'")
    assert len(interrupted) == 1
    run_id = interrupted[0].info.run_id
    assert Path(interrupted[0].data.tags["checkpoint"]).is_file()
    assert len(world.history(run_id, "train_loss")) == 1
    monkeypatch.undo()  # training no longer dies

    resumed = run_kd("distill", "--resume", run_id, "--json")
    assert resumed["run_id"] == run_id
    assert resumed["test_f1"] == smaller_student["test_f1"]
    for name in ("loss", "hard", "logits_mse", "task_mse", "shared_mse"):
        assert world.history(run_id, f"train_{name}") == world.history(smaller_student["run_id"], f"train_{name}"), name
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["model_kind"] == "student"
    assert "checkpoint" not in run.data.tags
    assert not Path(interrupted[0].data.tags["checkpoint"]).exists()


# --------------------------------------------------------------------------- refusals


def no_runs_in(world: World, experiment: str) -> bool:
    found = world.client.get_experiment_by_name(experiment)
    return found is None or not world.client.search_runs([found.experiment_id])


def test_corpus_not_in_the_cache_is_refused(world, tmp_path):
    write_corpus(tmp_path / "third", seed=7)
    args = world.distill_args("--data-dir", str(tmp_path), "--experiment", "refused")
    args[args.index("--task") + 1] = "third"
    message = run_kd_failing(*args)
    assert "third" in message and world.cache in message
    assert no_runs_in(world, "refused")


def test_same_corpus_name_with_changed_tokens_is_refused(world, tmp_path):
    changed = tmp_path / "corpora"
    shutil.copytree(world.data_dir / "tiny", changed / "tiny")
    train = changed / "tiny" / "train.tsv"
    lines = train.read_text().splitlines()
    index = next(i for i, line in enumerate(lines) if line.startswith("the\t"))
    lines[index] = lines[index].replace("the\t", "a\t", 1)
    train.write_text("\n".join(lines) + "\n")
    message = run_kd_failing(*world.distill_args("--data-dir", str(changed), "--experiment", "refused"))
    assert "differs" in message and "tiny" in message
    assert no_runs_in(world, "refused")


def test_fewer_sentences_than_cached_is_refused(world, tmp_path):
    changed = tmp_path / "corpora"
    shutil.copytree(world.data_dir / "tiny", changed / "tiny")
    devel = changed / "tiny" / "devel.tsv"
    blocks = devel.read_text().strip().split("\n\n")
    devel.write_text("\n\n".join(blocks[:-1]) + "\n")
    message = run_kd_failing(*world.distill_args("--data-dir", str(changed), "--experiment", "refused"))
    assert "other data" in message
    assert no_runs_in(world, "refused")


def test_train_split_that_was_not_cached_is_refused(world):
    message = run_kd_failing(*world.distill_args("--train-splits", "train,devel,test", "--experiment", "refused"))
    assert "test" in message and world.cache in message
    assert no_runs_in(world, "refused")


def test_fewer_train_splits_than_cached_are_fine(world):
    """Training on `train` only (devel held out for model selection) uses the cache's train split."""
    summary = run_kd(*world.distill_args("--train-splits", "train"))
    run = world.client.get_run(summary["run_id"])
    assert run.info.status == "FINISHED" and "devel_f1" in run.data.metrics


@pytest.mark.parametrize("what", ["teacher", "unknown"])
def test_cache_that_is_not_a_cache_run_is_refused(world, what):
    run_id = world.teacher if what == "teacher" else "0" * 32
    args = world.distill_args("--experiment", "refused")
    args[args.index("--cache") + 1] = run_id
    message = run_kd_failing(*args)
    assert run_id in message and ("not a cache run" in message if what == "teacher" else "no such run" in message)
    assert no_runs_in(world, "refused")


def test_loss_needing_layers_the_cache_lacks_is_refused(world, logits_only_cache):
    args = world.distill_args("--loss", "intermediate", "--gamma", "0.5", "--experiment", "refused")
    args[args.index("--cache") + 1] = logits_only_cache
    message = run_kd_failing(*args)
    assert "task" in message and "shared" in message and "--layers" in message
    assert no_runs_in(world, "refused")
    # The logits loss is fine with that cache.
    args = world.distill_args("--loss", "soft")
    args[args.index("--cache") + 1] = logits_only_cache
    summary = run_kd(*args)
    assert world.client.get_run(summary["run_id"]).data.tags["cache_run"] == logits_only_cache


@pytest.mark.parametrize("extra, needle", [
    (["--teacher", "abc"], "--cache"),  # both a cache and teachers
    (["--loss", "logits", "--gamma", "0.5"], "--gamma"),
    (["--loss", "nope"], "nope"),
    (["--alpha", "0", "--beta", "0"], "zero"),
    (["--tau", "0"], "--tau"),
])
def test_bad_distill_options_are_one_line_errors(world, extra, needle):
    message = run_kd_failing(*world.distill_args(*extra, "--experiment", "refused"))
    assert needle in message
    assert no_runs_in(world, "refused")


def test_neither_cache_nor_teacher_is_refused(world):
    args = world.distill_args("--experiment", "refused")
    del args[args.index("--cache"):args.index("--cache") + 2]
    assert "--cache" in run_kd_failing(*args)


# --------------------------------------------------------------------------- MLflow project


