"""kd's FusedAdam against the independent truth, torch.optim.Adam: same parameters and gradients
give the same parameters and moments as torch's fused Adam (and, within rounding, its default
one); checkpoints load both ways; kd's training path never imports torch._dynamo."""
from __future__ import annotations

import copy
import io
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from kd.training.adam import FusedAdam
from kd.training.schedule import _adam, task_optimizers
from tests.conftest import write_corpus

REPOSITORY = Path(__file__).resolve().parents[1]


class TwoHeads(torch.nn.Module):
    """Shared layers, one head per task (the other head gets no gradient on a step), and a
    projection added to the optimizer as a second group, as kd's students are."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.shared = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 6))
        self.heads = torch.nn.ModuleDict({"a": torch.nn.Linear(6, 3), "b": torch.nn.Linear(6, 3)})
        self.projection = torch.nn.Linear(3, 2)

    def loss(self, step: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(100 + step)
        inputs = torch.randn(4, 5, generator=generator)
        task = "a" if step % 3 else "b"
        out = self.heads[task](self.shared(inputs))
        if step % 4 == 0:
            out = out + self.projection(out).sum(-1, keepdim=True)
        return (out ** 2).mean() + out.sin().sum()


def main_parameters(model: TwoHeads) -> list[torch.nn.Parameter]:
    return list(model.shared.parameters()) + list(model.heads.parameters())


def with_torch(fused: bool | None) -> Callable[[TwoHeads], torch.optim.Optimizer]:
    def make(model: TwoHeads) -> torch.optim.Optimizer:
        optimizer = torch.optim.Adam(main_parameters(model), lr=0.01, fused=fused)
        optimizer.add_param_group({"params": list(model.projection.parameters()), "lr": 0.03})
        return optimizer
    return make


def with_kd(model: TwoHeads) -> FusedAdam:
    optimizer = FusedAdam(main_parameters(model), lr=0.01)
    optimizer.add_param_group({"params": list(model.projection.parameters()), "lr": 0.03})
    return optimizer


def steps(model: TwoHeads, optimizer, first: int, last: int) -> None:
    for step in range(first, last):
        if step == 10:
            optimizer.param_groups[0]["lr"] = 0.004
        optimizer.zero_grad(set_to_none=True)
        model.loss(step).backward()
        optimizer.step()


def trained(make: Callable, count: int = 20) -> tuple[TwoHeads, object]:
    model = TwoHeads()
    optimizer = make(model)
    steps(model, optimizer, 0, count)
    return model, optimizer


def assert_same(model: TwoHeads, other: TwoHeads, optimizer, other_optimizer, atol: float = 0.0) -> None:
    for (name, mine), theirs in zip(model.named_parameters(), other.parameters()):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=atol, msg=name)
    mine_state, their_state = optimizer.state_dict()["state"], other_optimizer.state_dict()["state"]
    assert mine_state.keys() == their_state.keys()
    for number, values in mine_state.items():
        assert values.keys() == their_state[number].keys()
        for key, value in values.items():
            torch.testing.assert_close(value, their_state[number][key].to(value.device), rtol=0,
                                       atol=atol * 1e3 if key == "exp_avg_sq" else atol, msg=f"{number} {key}")


def test_twenty_steps_equal_torch_fused_adam_exactly():
    model, optimizer = trained(with_kd)
    reference, reference_optimizer = trained(with_torch(True))
    assert_same(model, reference, optimizer, reference_optimizer)
    # The head and projection that missed steps were left alone: fewer steps than the shared layers.
    state = optimizer.state
    assert state[model.heads["b"].weight]["step"].item() == 7
    assert state[model.projection.weight]["step"].item() == 5
    assert state[model.shared[0].weight]["step"].item() == 20
    assert state[model.shared[0].weight]["step"].dtype == torch.float32


def test_twenty_steps_match_torch_default_adam_within_rounding():
    model, optimizer = trained(with_kd)
    reference, reference_optimizer = trained(with_torch(None))
    assert_same(model, reference, optimizer, reference_optimizer, atol=1e-6)


def through_a_file(state_dict: dict) -> dict:
    """As kd's checkpoints keep it: torch.save, then torch.load(weights_only=True)."""
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("writer, reader, atol", [
    (with_torch(True), with_kd, 0.0), (with_kd, with_torch(True), 0.0),
    (with_kd, with_kd, 0.0), (with_torch(None), with_kd, 1e-6), (with_kd, with_torch(None), 1e-6)],
    ids=["torch fused -> kd", "kd -> torch fused", "kd -> kd", "torch default -> kd", "kd -> torch default"])
def test_a_checkpoint_loads_both_ways_and_training_goes_on_the_same(writer, reader, atol):
    model, optimizer = trained(writer, 12)
    resumed = copy.deepcopy(model)
    resumed_optimizer = reader(resumed)
    resumed_optimizer.param_groups[0]["lr"] = 0.5  # overwritten by the checkpoint's
    resumed_optimizer.load_state_dict(through_a_file(optimizer.state_dict()))
    assert [g["lr"] for g in resumed_optimizer.param_groups] == [0.004, 0.03]
    steps(model, optimizer, 12, 20)
    steps(resumed, resumed_optimizer, 12, 20)
    assert_same(resumed, model, resumed_optimizer, optimizer, atol=atol)
    straight, straight_optimizer = trained(writer, 20)
    assert_same(resumed, straight, resumed_optimizer, straight_optimizer, atol=atol)


def test_fused_adam_refuses_what_it_would_not_do_as_torch_does():
    model = TwoHeads()
    with pytest.raises(ValueError, match="betas"):
        FusedAdam([{"params": model.shared.parameters(), "betas": (0.8, 0.999)}])
    optimizer = FusedAdam(model.shared.parameters())
    with pytest.raises(ValueError, match="more than one parameter group"):
        optimizer.add_param_group({"params": model.shared[0].weight})
    other = torch.optim.Adam(model.shared.parameters(), weight_decay=0.1)
    with pytest.raises(ValueError, match="weight_decay"):
        optimizer.load_state_dict(other.state_dict())
    with pytest.raises(ValueError, match="set_to_none"):
        optimizer.zero_grad(set_to_none=False)


def test_kd_optimizers_are_fused_adam_on_cpu_and_torch_adam_elsewhere():
    model = TwoHeads()
    model.task_names = ["a", "b"]
    assert all(isinstance(o, FusedAdam) for o in task_optimizers(model, 0.01).values())
    on_meta = [torch.nn.Parameter(torch.zeros(3, device="meta"))]
    assert type(_adam(on_meta, 0.01)) is torch.optim.Adam


TRAIN_TINY = """
import sys, pathlib, torch
from kd.data.batching import EncodedDataset
from kd.data.corpora import load_split
from kd.data.vocab import build_vocabularies
from kd.models.tagger import TaggerConfig
from kd.training.job_definition import build_tagger
from kd.training.loop import Trainable, TrainingOptions, TrainingState, train
from kd.training.schedule import alternating_plan, supervised_loss, task_optimizers
sentences = load_split(pathlib.Path(sys.argv[1]), "train")
vocabularies = build_vocabularies({"tiny": sentences})
dataset = EncodedDataset(sentences, vocabularies, "tiny")
config = TaggerConfig(word_dim=8, char_dim=4, char_hidden=4, shared_hidden=8, task_hidden=8, hidden_dim=8)
model, _ = build_tagger(config, vocabularies, seed=3)
trainable = Trainable(model, task_optimizers(model, 0.01), alternating_plan({"tiny": dataset}, 16, "uniform"),
                      supervised_loss(model))
result = train(trainable, TrainingOptions(epochs=2, seed=5, clip_norm=1.0), torch.device("cpu"),
               checkpoint_path=sys.argv[2])
train(trainable, TrainingOptions(epochs=3, seed=5), torch.device("cpu"), checkpoint_path=sys.argv[2],
      state=TrainingState.load(sys.argv[2]))
print("dynamo" if "torch._dynamo" in sys.modules else "no dynamo")
torch.optim.Adam(model.parameters())  # the control: torch.optim does import it
print("dynamo" if "torch._dynamo" in sys.modules else "no dynamo")
"""


def test_training_and_resuming_never_import_torch_dynamo(tmp_path):
    # torch.optim's add_param_group imports torch._dynamo: 1.1 s of every kd train process.
    folder = write_corpus(tmp_path / "tiny", sizes={"train": 40})
    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY)}
    result = subprocess.run([sys.executable, "-c", TRAIN_TINY, str(folder), str(tmp_path / "run.pt")],
                            capture_output=True, text=True, env=environment, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["no", "dynamo", "dynamo"]
