"""What a student run shows beyond its scores: the per-term loss picture and the teacher-quality check, by hand."""
from __future__ import annotations

import pytest

from kd.losses.distill import LOSSES, DistillWeights
from kd.training.curves import loss_terms, plot_loss_terms, weighted_shares

HISTORY = [{"train_loss": 153.5, "train_hard": 10.0, "train_logits_mse": 297.0, "devel_f1": 0.1},
           {"train_loss": 12.5, "train_hard": 3.0, "train_logits_mse": 22.0, "devel_f1": 0.5}]


def test_loss_terms_are_the_train_metrics_but_the_total():
    assert loss_terms(HISTORY) == {"hard": [10.0, 3.0], "logits_mse": [297.0, 22.0]}
    assert loss_terms([{"train_loss": 1.0}]) == {}
    assert loss_terms([]) == {}


def test_weighted_shares_by_hand():
    shares = weighted_shares(loss_terms(HISTORY), {"hard": 0.5, "logits_mse": 0.5})
    assert shares["hard"] == pytest.approx([5 / 153.5, 1.5 / 12.5])
    assert shares["logits_mse"] == pytest.approx([148.5 / 153.5, 11 / 12.5])
    zero = weighted_shares(loss_terms(HISTORY), {"hard": 1.0, "logits_mse": 0.0})
    assert zero == {"hard": [1.0, 1.0], "logits_mse": [0.0, 0.0]}


def test_every_loss_declares_the_weight_of_each_term():
    """The declared weights reproduce the total each loss computes (a made-up view from the loss tests)."""
    from tests.test_losses_distill import made_up_view, tags_tensor, teacher_targets

    weights = DistillWeights(alpha=0.3, beta=0.7, gamma=0.2, kappa=0.1, tau=2.0)
    for name, registered in LOSSES.items():
        terms = registered.function(made_up_view(), teacher_targets(), tags_tensor(), weights)
        declared = registered.term_weights(weights)
        assert set(declared) == set(terms) - {"loss"}, name
        total = sum(weight * float(terms[term].detach()) for term, weight in declared.items())
        assert float(terms["loss"].detach()) == pytest.approx(total, rel=1e-5), name


def test_plot_is_a_png_only_when_there_are_terms(tmp_path):
    path = plot_loss_terms(HISTORY, {"hard": 0.5, "logits_mse": 0.5}, tmp_path / "terms.png")
    assert path == tmp_path / "terms.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_loss_terms([{"train_loss": 1.0}], {}, tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def test_a_one_epoch_picture_shows_its_epoch_and_shares():
    from kd.training.curves import loss_terms_figure

    figure = loss_terms_figure(HISTORY[:1], {"hard": 0.5, "logits_mse": 0.5})
    terms, shares = figure.axes
    for axis in (terms, shares):
        assert axis.get_xlim() == (0.5, 1.5)
    heights = [bar.get_height() for bar in shares.patches]
    assert heights == pytest.approx([5 / (5 + 148.5), 148.5 / (5 + 148.5)])  # 0.5 x 10 and 0.5 x 297


def test_a_runs_f1_on_one_corpus_by_hand():
    from kd.training.student_diagnostics import TeacherCheck, corpus_f1

    mtm = {"test_f1": 0.5, "test_f1/A": 0.4, "test_f1/B": 0.6, "devel_f1/A": 0.3}
    assert corpus_f1(mtm, {"task": "A,B"}, "A", "test") == 0.4
    assert corpus_f1(mtm, {"task": "A,B"}, "B", "devel") is None
    assert corpus_f1({"test_f1": 0.7}, {"task": "A"}, "A", "test") == 0.7
    assert corpus_f1({"test_f1": 0.7}, {"task": "B"}, "A", "test") is None
    check = TeacherCheck("devel", 0.5, 0.6, "the single-task models' mean in this experiment")
    assert check.weaker and not TeacherCheck("devel", 0.6, 0.6, "x").weaker
    assert check.message("A") == ("warning: the teacher's devel F1 on A is 50.00, below the single-task models' "
                                  "mean in this experiment (60.00): distilling from it is unlikely to help")


@pytest.mark.parametrize("teacher_splits, alike_train, alike_both", [("train,devel", False, True), ("train", True, False),
                                                                   ("devel,train", False, True)])
def test_the_teacher_fraction_needs_a_teacher_trained_on_the_students_splits(tracking, teacher_splits, alike_train,
                                                                             alike_both):
    """A student trained on train over a teacher trained on train+devel is no fraction of like with like."""
    from mlflow import MlflowClient

    from kd.training.weighing import teacher_f1

    client = MlflowClient(tracking)
    run = client.create_run(client.create_experiment("t"), tags={"task": "A,B"})
    client.log_param(run.info.run_id, "train_splits", teacher_splits)
    client.log_metric(run.info.run_id, "A/test_f1", 0.8)
    assert teacher_f1(client, [run.info.run_id], "A", "test", ["train"]) == (0.8, alike_train)
    assert teacher_f1(client, [run.info.run_id], "A", "test", ["devel", "train"]) == (0.8, alike_both)
