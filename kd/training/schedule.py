"""How a tagger is trained, whatever it is: the epoch plan that alternates between corpora, the
optimizers that step for each corpus, and the supervised loss. Shared by the BiLSTM and transformer
jobs and by the assembler."""
from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from kd.data.batching import Batch, EncodedDataset, bucketed_batches
from kd.losses.supervised import hard_label_loss
from kd.training.adam import FUSED_DEVICES, FusedAdam, Optimizer
from kd.training.loop import EpochPlan, LossFunction


def alternating_plan(datasets: dict[str, EncodedDataset], batch_size: int, sampling: str) -> EpochPlan:
    """An epoch is as many steps as the batches of all corpora together. Each step draws a corpus
    (uniformly, or in proportion to its number of batches) and takes that corpus's next batch of
    its shuffled, length-bucketed batches, reshuffled when they run out. With one corpus, an
    epoch is each of its batches once."""
    names = list(datasets)

    def shuffled(task: str, generator: np.random.Generator) -> deque[np.ndarray]:
        return deque(bucketed_batches(datasets[task].lengths, batch_size, generator))

    def plan(generator: np.random.Generator) -> Iterator[tuple[str, Batch]]:
        queues = {task: shuffled(task, generator) for task in names}
        if len(names) == 1:
            task = names[0]
            for sentence_ids in queues[task]:
                yield task, datasets[task].batch(sentence_ids)
            return
        counts = np.array([len(queues[task]) for task in names], dtype=np.float64)
        weights = counts / counts.sum() if sampling == "proportional" else np.full(len(names), 1 / len(names))
        for index in generator.choice(len(names), size=int(counts.sum()), p=weights):
            task = names[index]
            if not queues[task]:
                queues[task] = shuffled(task, generator)
            yield task, datasets[task].batch(queues[task].popleft())
    return plan


def supervised_loss(model: Any) -> LossFunction:
    """Hard-label loss of any kd tagger (`model(batch, task)`, `crf(task)`)."""
    def loss(task: str, batch: Batch) -> dict[str, torch.Tensor]:
        return {"loss": hard_label_loss(model(batch, task), batch.tags, model.crf(task))}
    return loss


def task_optimizers(model: Any, learning_rate: float, state: str = "shared") -> dict[str, Optimizer]:
    """The optimizer that steps for each task's batches: it updates the shared layers and that task's
    head (a head outside the step's graph has no gradient and is left alone).

    "per-task": one Adam per task, each with its own moments for the shared layers, as the method
    describes. "shared": one Adam whose moments for the shared layers gather every task's gradients.
    With one task the two are the same. With six corpora the shared moments gave a better teacher at
    equal epochs (bench/README.md, "Distillation science"): per-task moments let every step take a
    full Adam-sized step along one task's gradient alone, so the shared layers zigzag between tasks.
    `model`: a Tagger or kd.models.transformer.TransformerTagger. `state` is checked by the
    schema (kd.option_schema's optimizer_state) where the job is made."""
    if state == "shared":
        adam = _adam(list(model.parameters()), learning_rate)
        return {task: adam for task in model.task_names}
    # Any multi-task tagger: `shared_parameters()`, `head(task)` and `task_names` (the BiLSTM, the transformer).
    shared = model.shared_parameters()
    return {task: _adam(shared + list(model.head(task).parameters()), learning_rate) for task in model.task_names}


def _adam(parameters: list[torch.nn.Parameter], learning_rate: float) -> Optimizer:
    # The fused kernel updates all parameters in one pass: ~4x faster than the default step
    # on CPU (6% of an epoch -> under 2%), where it and CUDA are the devices that have it.
    # kd's FusedAdam runs that kernel without constructing a torch.optim optimizer, which would
    # import torch._dynamo (1.1 s of a ~19 s one-epoch `kd train`; kd/training/adam.py).
    if all(p.device.type in FUSED_DEVICES for p in parameters):
        return FusedAdam(parameters, lr=learning_rate)
    return torch.optim.Adam(parameters, lr=learning_rate)
