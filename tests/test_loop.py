"""The training loop itself (kd.training.loop.train), on a tiny tagger without a tracking store:
a resumed run ends where an uninterrupted one ends, the best epoch's weights are restored, a
callback stops training, and the stage hook sees every stage of every step."""
from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

from kd.data.batching import EncodedDataset
from kd.data.corpora import load_split
from kd.data.vocab import Vocabularies, build_vocabularies
from kd.models.tagger import TaggerConfig
from kd.training.job_definition import build_tagger
from kd.training.loop import HookChain, Trainable, TrainingHooks, TrainingOptions, TrainingState, train
from kd.training.schedule import alternating_plan, supervised_loss, task_optimizers
from tests.conftest import write_corpus

TINY = TaggerConfig(word_dim=8, char_dim=4, char_hidden=4, shared_hidden=8, task_hidden=8, hidden_dim=8, dropout=0.1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[EncodedDataset, Vocabularies]:
    torch.set_num_threads(1)
    folder = write_corpus(tmp_path_factory.mktemp("loop") / "tiny", sizes={"train": 60})
    sentences = load_split(folder, "train")
    vocabularies = build_vocabularies({"tiny": sentences})
    return EncodedDataset(sentences, vocabularies, "tiny"), vocabularies


@pytest.fixture
def dataset(tiny) -> EncodedDataset:
    return tiny[0]


def fresh(dataset: EncodedDataset, vocabularies: Vocabularies):
    model, _ = build_tagger(TINY, vocabularies, seed=3)
    return model, task_optimizers(model, 0.01), alternating_plan({"tiny": dataset}, 16, "uniform")


def run(tiny, epochs: int, **extra):
    model, optimizers, plan = fresh(*tiny)
    result = train(Trainable(model, optimizers, plan, supervised_loss(model)), TrainingOptions(epochs=epochs, seed=5),
                   torch.device("cpu"), **extra)
    return model, result


def test_resume_from_a_checkpoint_equals_the_uninterrupted_run(tiny, tmp_path):
    straight, straight_result = run(tiny, 3)
    checkpoint = tmp_path / "run.pt"
    run(tiny, 2, checkpoint_path=checkpoint)  # as if killed after epoch 2
    state = TrainingState.load(checkpoint)
    assert state.epoch == 2
    resumed, resumed_result = run(tiny, 3, checkpoint_path=checkpoint, state=state)
    assert [h["train_loss"] for h in resumed_result.state.history] == \
        [h["train_loss"] for h in straight_result.state.history]
    for name, tensor in straight.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), name


def test_the_best_epoch_is_restored_not_the_last(tiny):
    scores = iter([0.2, 0.9, 0.4])  # epoch 2 is the best
    weights = {}

    def evaluate_epoch(epoch: int) -> dict[str, float]:
        weights[epoch] = {k: v.clone() for k, v in model.state_dict().items()}
        return {"devel_f1": next(scores)}

    model, optimizers, plan = fresh(*tiny)
    result = train(Trainable(model, optimizers, plan, supervised_loss(model)), TrainingOptions(epochs=3, seed=5),
                   torch.device("cpu"), evaluate_epoch=evaluate_epoch, selection_metric="devel_f1")
    assert (result.state.best_epoch, result.state.best_score, result.state.epoch) == (2, 0.9, 3)
    assert any(not torch.equal(weights[2][k], weights[3][k]) for k in weights[2]), "epoch 3 changed the weights"
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, weights[2][name]), name


class StopAfterTwo(TrainingHooks):
    def __init__(self) -> None:
        self.heard = []

    def on_epoch(self, epoch: int, metrics: dict[str, float]) -> bool:
        self.heard.append((epoch, sorted(metrics)))
        return epoch == 2


class CountBatches(TrainingHooks):
    def __init__(self) -> None:
        self.batches = []

    def on_batch(self, epoch, tokens, terms) -> None:
        self.batches.append((epoch, tokens))


def test_a_hook_stops_training_after_its_epoch_and_every_hook_of_a_chain_hears_it(tiny, dataset):
    stop, count = StopAfterTwo(), CountBatches()
    _, result = run(tiny, 5, hooks=HookChain(count, stop))
    assert result.stopped_early and result.state.epoch == 2 and len(result.state.history) == 2
    assert stop.heard == [(1, ["train_loss"]), (2, ["train_loss"])]
    per_epoch = len(list(alternating_plan({"tiny": dataset}, 16, "uniform")(np.random.default_rng(0))))
    assert len(count.batches) == 2 * per_epoch and sum(t for e, t in count.batches if e == 1) == dataset.num_tokens


def test_a_chain_says_a_warning_once(capsys):
    said = []

    class Own(TrainingHooks):
        def warn(self, message: str) -> None:
            said.append(message)

    HookChain(TrainingHooks(), Own(), Own()).warn("teacher F1 low")
    assert said == ["teacher F1 low"] and capsys.readouterr().err == ""
    HookChain(TrainingHooks(), TrainingHooks()).warn("teacher F1 low")
    assert capsys.readouterr().err == "teacher F1 low\n"


def test_the_stage_hook_wraps_every_stage_of_every_step(tiny, dataset):
    seen: list[str] = []

    class Stages(TrainingHooks):
        @contextlib.contextmanager
        def stage(self, name: str):
            seen.append(name)
            yield

    batches = len(list(alternating_plan({"tiny": dataset}, 16, "uniform")(np.random.default_rng(0))))
    run(tiny, 1, hooks=Stages())
    stages = ["zero_grad", "forward (all)", "backward (all)", "gradient clipping", "optimizer step"]
    assert seen == stages * batches
