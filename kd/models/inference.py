"""Tagging raw token lists with a saved model: shared by `kd predict`, the MLflow pyfunc model and
evaluation of reloaded models."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from kd.data.batching import EncodedDataset
from kd.errors import KdError
from kd.models.io import SavedModel, load_model
from kd.models.predict import PREDICT_BATCH_TOKENS, as_sentences, predict_tags


class SavedTagger:
    def __init__(self, directory: str | Path | SavedModel, device: str | torch.device = "cpu", task: str | None = None,
                 precision: str = "fp32") -> None:
        """`directory`: a saved model's folder, or the model already loaded."""
        saved = directory if isinstance(directory, SavedModel) else load_model(directory, device)
        self.model = saved.model
        self.vocabularies = saved.vocabularies
        self.device = torch.device(device)
        tasks = self.model.task_names
        if task is None and len(tasks) > 1:
            raise KdError(f"the model tags several corpora ({', '.join(tasks)}): choose one with --task")
        if task is not None and task not in tasks:
            raise KdError(f"--task {task}: the model has no such task; it has {', '.join(tasks)}")
        self.task = task or tasks[0]
        self.precision = precision

    def tag(self, sentences: Sequence[Sequence[str]], batch_tokens: int = PREDICT_BATCH_TOKENS) -> list[list[str]]:
        non_empty = [i for i, tokens in enumerate(sentences) if len(tokens) > 0]
        tagged: list[list[str]] = [[] for _ in sentences]
        if not non_empty:
            return tagged
        dataset = EncodedDataset(as_sentences([sentences[i] for i in non_empty]), self.vocabularies,
                                 self.task, with_tags=False)
        predicted = predict_tags(self.model, dataset, self.vocabularies, self.task, self.device,
                                 self.precision, batch_tokens)
        for i, tags in zip(non_empty, predicted):
            tagged[i] = tags
        return tagged
