"""`kd train` and `kd predict` end to end, against a throwaway MLflow store."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from mlflow import MlflowClient

from kd.cli.main import cli
from kd.data.conll import read_conll
from kd.tracking.logged_models import logged_model_location
from kd.training.evaluate import entity_scores
from tests.conftest import SMALL_MODEL, die_after_epoch, run_kd




def train_args(data_dir: Path, *extra: str) -> list[str]:
    return ["train", "--task", "tiny", "--data-dir", str(data_dir), "--epochs", "3", "--batch-size", "16", "--learning-rate", "0.02",
            *SMALL_MODEL, "--json", *extra]


@pytest.mark.slow
@pytest.mark.parametrize("output", ["softmax", "crf"])
def test_train_logs_everything_and_predict_reproduces_f1(data_dir, tracking, tmp_path, output):
    summary = run_kd(*train_args(data_dir, "--output", output))
    client = MlflowClient(tracking)
    run = client.get_run(summary["run_id"])
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert tags["task"] == "tiny" and tags["model_kind"] == "stm" and tags["output"] == output
    assert tags["seed"] == "1" and tags["git_commit"]
    assert tags["model_name"] == f"stm-{output}" and len(tags["model_id"]) == 12
    assert tags["mlflow.runName"] == f"stm-{output}-tiny-s1", "without --run-name: <model_name>-<corpus>-s<seed>"
    for option in ("output", "seed", "epochs", "batch_size", "learning_rate", "word_dim", "char_hidden",
                   "shared_hidden", "task_hidden", "hidden_dim", "dropout", "train_splits", "eval_split"):
        assert option in run.data.params
    losses = client.get_metric_history(run.info.run_id, "train_loss")
    assert sorted(m.step for m in losses) == [1, 2, 3]
    assert losses[-1].value < losses[0].value
    for metric in ("test_precision", "test_recall", "test_f1"):
        assert run.data.metrics[metric] == pytest.approx(summary[metric])
    assert summary["test_f1"] > 0.3, "the tiny corpus is learnable in three epochs"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.json", "report.json", "predictions"} <= artifacts
    assert (Path(logged_model_location(tracking, run.info.run_id)) / "MLmodel").is_file(), "a logged model"
    assert "predictions/test.conll" in {a.path for a in client.list_artifacts(run.info.run_id, "predictions")}

    # A fresh process reloads the logged model and tags the test file with the same F1.
    out = tmp_path / "tagged.conll"
    test_file = data_dir / "tiny" / "test.tsv"
    subprocess.run([sys.executable, "-m", "kd", "predict", "--model", summary["run_id"], "--input", str(test_file),
                    "--out", str(out)], check=True, cwd=tmp_path)
    gold = read_conll(test_file)
    # Read the predicted column raw: read_conll would repair a chunk-initial I- into B-.
    tagged = [[line.split("\t") for line in block.splitlines()] for block in out.read_text().strip().split("\n\n")]
    assert [tuple(token for token, _ in s) for s in tagged] == [s.tokens for s in gold]
    f1 = entity_scores([s.tags for s in gold], [[tag for _, tag in s] for s in tagged]).f1
    assert f1 == pytest.approx(summary["test_f1"], abs=1e-12)


@pytest.mark.slow
def test_same_seed_same_result_bit_for_bit(data_dir, tracking):
    first = run_kd(*train_args(data_dir, "--output", "crf"))
    second = run_kd(*train_args(data_dir, "--output", "crf"))
    client = MlflowClient(tracking)
    assert first["test_f1"] == second["test_f1"]
    history = [[m.value for m in client.get_metric_history(r, "train_loss")] for r in (first["run_id"], second["run_id"])]
    assert history[0] == history[1]
    third = run_kd(*train_args(data_dir, "--output", "crf", "--seed", "2"))
    assert [m.value for m in client.get_metric_history(third["run_id"], "train_loss")] != history[0]


@pytest.mark.slow
def test_held_out_devel_is_scored_each_epoch_and_best_epoch_kept(data_dir, tracking):
    summary = run_kd(*train_args(data_dir, "--train-splits", "train"))
    client = MlflowClient(tracking)
    # One point per epoch, then the selected model's score as the run's final value.
    *per_epoch, final = sorted(client.get_metric_history(summary["run_id"], "devel_f1"), key=lambda m: m.timestamp)
    assert [m.step for m in per_epoch] == [1, 2, 3]
    best = max(per_epoch, key=lambda m: (m.value, -m.step))
    assert final.value == pytest.approx(best.value)
    assert client.get_run(summary["run_id"]).data.metrics["devel_f1"] == pytest.approx(best.value)
    assert summary["best_epoch"] == best.step
    # Convergence (kd.tracking.metrics.late_gains): the last devel F1 minus the best before the last 2 epochs.
    assert summary["devel_f1_late_gain"] == pytest.approx(per_epoch[-1].value - per_epoch[0].value)
    # The scores a user looks for first, in the description MLflow shows above the metrics.
    description = client.get_run(summary["run_id"]).data.tags["mlflow.note.content"]
    assert description.startswith(f"test F1 {100 * summary['test_f1']:.2f}, devel F1 {100 * best.value:.2f}, "
                                  f"best epoch {best.step} of 3")
    assert summary["devel_f1"] == pytest.approx(best.value)
    assert {"devel_precision", "devel_recall", "test_f1"} <= set(summary)


@pytest.mark.slow
def test_predict_plain_text_to_stdout(data_dir, tracking, tmp_path):
    summary = run_kd(*train_args(data_dir))
    text = tmp_path / "sentences.txt"
    text.write_text("the patient was given aspirin\n\nno signs of cancer\n")
    for precision in ("fp32", "bf16"):
        result = CliRunner().invoke(cli, ["predict", "--model", summary["run_id"], "--input", str(text),
                                          "--precision", precision])
        assert result.exit_code == 0, result.output
        blocks = [b.splitlines() for b in result.output.strip().split("\n\n")]
        assert [[line.split("\t")[0] for line in b] for b in blocks] == [
            ["the", "patient", "was", "given", "aspirin"], ["no", "signs", "of", "cancer"]]
        tags = [line.split("\t")[1] for b in blocks for line in b]
        assert all(tag == "O" or tag[:2] in ("B-", "I-") for tag in tags)
    result = CliRunner().invoke(cli, ["predict", "--model", summary["run_id"], "--input", str(text),
                                      "--precision", "fp8"])
    assert result.exit_code == 2 and "--precision" in result.output


@pytest.mark.slow
def test_pyfunc_model_tags_tokens(data_dir, tracking):
    import mlflow.pyfunc
    import pandas as pd

    summary = run_kd(*train_args(data_dir))
    model = mlflow.pyfunc.load_model(f"runs:/{summary['run_id']}/model")
    tags = model.predict(pd.DataFrame({"tokens": [["aspirin", "for", "fever"], ["the", "patient"]]}))
    assert [len(t) for t in tags] == [3, 2]
    assert all(tag == "O" or tag[:2] in ("B-", "I-") for sentence in tags for tag in sentence)


@pytest.mark.slow
def test_resume_after_interruption_reaches_the_same_result(data_dir, tracking, monkeypatch):
    """A run killed after epoch 2 of 4 and resumed ends exactly where an uninterrupted run ends."""
    straight = run_kd(*train_args(data_dir, "--epochs", "4", "--output", "crf"))
    die_after_epoch(monkeypatch, 2)
    result = CliRunner().invoke(cli, train_args(data_dir, "--epochs", "4", "--output", "crf"))
    assert result.exit_code != 0
    client = MlflowClient(tracking)
    interrupted = client.search_runs([client.get_experiment_by_name("kd").experiment_id],
                                     filter_string="attributes.status = 'KILLED'")
    assert len(interrupted) == 1
    run_id = interrupted[0].info.run_id
    assert Path(interrupted[0].data.tags["checkpoint"]).is_file()
    monkeypatch.undo()  # training no longer dies

    resumed = run_kd("train", "--resume", run_id, "--json")
    assert resumed["run_id"] == run_id
    assert resumed["test_f1"] == straight["test_f1"]
    losses = lambda r: [m.value for m in sorted(client.get_metric_history(r, "train_loss"), key=lambda m: m.step)]
    assert losses(run_id) == losses(straight["run_id"])
    assert client.get_run(run_id).info.status == "FINISHED"
    assert not Path(interrupted[0].data.tags["checkpoint"]).exists()
    assert "checkpoint" not in client.get_run(run_id).data.tags


def test_bad_corpus_line_is_one_line_error_and_no_run(data_dir, tracking):
    bad = data_dir / "tiny" / "train.tsv"
    lines = bad.read_text().splitlines()
    lines[4] = "aspirin\tX-Chemical-"  # an invalid tag on line 5
    bad.write_text("\n".join(lines) + "\n")
    result = CliRunner().invoke(cli, train_args(data_dir))
    assert result.exit_code == 2
    message = result.output.strip()
    assert len(message.splitlines()) == 1 and message.startswith("error: ") and f"{bad}:5" in message
    client = MlflowClient(tracking)
    experiment = client.get_experiment_by_name("kd")
    assert experiment is None or not client.search_runs([experiment.experiment_id])


@pytest.mark.parametrize("args, needle", [
    (["--device", "cuda"] if not torch.cuda.is_available() else ["--device", "nonsense"], "--device"),
    (["--epochs", "0"], "--epochs"),
    (["--train-splits", "train,dev"], "--train-splits"),
])
def test_bad_options_are_one_line_errors(data_dir, tracking, args, needle):
    result = CliRunner().invoke(cli, train_args(data_dir, *args))
    assert result.exit_code == 2
    assert needle in result.output and len(result.output.strip().splitlines()) == 1


def test_unknown_corpus_names_the_data_dir(tracking, tmp_path):
    result = CliRunner().invoke(cli, ["train", "--task", "nope", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2 and "nope" in result.output


def test_pretrained_vectors_set_the_size_and_initialise_known_words(data_dir, tracking, tmp_path):
    """GloVe text vectors: the word size follows the file, known words start from their vectors."""
    from kd.data.corpora import load_split
    from kd.data.vocab import build_vocabularies
    from kd.models.tagger import TaggerConfig
    from kd.training.job_definition import build_tagger

    vectors = {"aspirin": [0.5] * 12, "cancer": [-0.25] * 12, "patient": [1.0] * 12, "absent": [2.0] * 12}
    path = tmp_path / "vectors.txt"
    path.write_text("".join(f"{word} {' '.join(map(str, values))}\n" for word, values in vectors.items()))
    summary = run_kd(*train_args(data_dir, "--embeddings", str(path), "--epochs", "1"))
    run = MlflowClient(tracking).get_run(summary["run_id"])
    assert run.data.metrics["pretrained_dim"] == 12
    assert run.data.metrics["pretrained_words_found"] == 3

    vocabularies = build_vocabularies({"tiny": load_split(data_dir / "tiny", "train")})
    model, facts = build_tagger(TaggerConfig(embeddings=str(path)), vocabularies, seed=1)
    assert model.config.word_dim == 12 and facts["pretrained_words_found"] == 3
    weights = model.word_embedding.weight.detach()
    assert torch.equal(weights[vocabularies.words.lookup("aspirin")], torch.full((12,), 0.5))
    assert torch.equal(weights[vocabularies.words.lookup("cancer")], torch.full((12,), -0.25))


def test_unreadable_vectors_are_a_one_line_error(data_dir, tracking, tmp_path):
    path = tmp_path / "vectors.txt"
    path.write_text("aspirin 0.5 0.5\ncancer 0.5\n")
    result = CliRunner().invoke(cli, train_args(data_dir, "--embeddings", str(path)))
    assert result.exit_code == 2 and f"{path}:2" in result.output
    assert len(result.output.strip().splitlines()) == 1
