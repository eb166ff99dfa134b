"""A student's unlabelled text at a bounded cost.

`--unlabelled-ratio R`: each epoch trains on every labelled sentence and R x (labelled sentences)
unlabelled ones, taken in turn from one seeded shuffle of the file, continuing from epoch to epoch
(epoch e takes positions e*k .. (e+1)*k - 1 of the shuffle, wrapping around), so the text is used
evenly and a resumed run draws what the uninterrupted one would have."""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from kd.data.batching import Batch, EncodedDataset, bucketed_batches


class UnlabelledPlan:
    """The epoch plan of one student corpus whose dataset holds `labelled` sentences followed by
    the unlabelled ones. `epoch` is the next epoch's index (0-based); set it when resuming."""

    def __init__(self, task: str, dataset: EncodedDataset, labelled: int, ratio: float, batch_size: int,
                 seed: int) -> None:
        self.task, self.dataset, self.labelled, self.batch_size = task, dataset, labelled, batch_size
        unlabelled = len(dataset) - labelled
        self.per_epoch = min(unlabelled, max(1, round(ratio * labelled)))
        self.shuffled = labelled + np.random.default_rng(seed).permutation(unlabelled)
        self.epoch = 0

    def drawn(self, epoch: int) -> np.ndarray:
        """The unlabelled sentence ids of `epoch`."""
        if self.per_epoch == 0:
            return np.empty(0, dtype=np.int64)
        positions = np.arange(epoch * self.per_epoch, (epoch + 1) * self.per_epoch) % len(self.shuffled)
        return self.shuffled[positions]

    def __call__(self, generator: np.random.Generator) -> Iterator[tuple[str, Batch]]:
        ids = np.concatenate([np.arange(self.labelled), self.drawn(self.epoch)])
        self.epoch += 1
        for rows in bucketed_batches(self.dataset.lengths[ids], self.batch_size, generator):
            yield self.task, self.dataset.batch(ids[rows])
