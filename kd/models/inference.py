"""Tagging raw token lists with a saved model, a BiLSTM tagger (kd.models.io) or a transformer
teacher (kd.models.transformer): shared by `kd predict`, the MLflow pyfunc model and evaluation of
reloaded models."""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from kd.data.batching import EncodedDataset
from kd.errors import KdError
from kd.models import io, transformer
from kd.models.io import SavedModel, load_model
from kd.models.predict import (PREDICT_BATCH_TOKENS, DecodeSettings, ScoredTags, dataset_form_table,
                              decode_scored_in_batches, tag_non_empty)
from kd.models.transformer import SentenceTooLong, TransformerTagger, load_transformer

# The description file each kind of saved model is recognised by.
DESCRIPTION_FILES = (io.CONFIG_FILE, transformer.CONFIG_FILE)


@dataclass
class SavedTransformer:
    """A transformer teacher's folder (kd.models.transformer.save_transformer), loaded."""

    model: TransformerTagger
    tags: dict[str, list[str]]  # task -> tag names, in the head's order


def find_saved_tagger(root: str | Path, shown_as: str | None = None) -> Path:
    """The folder under `root` (itself first) that holds a saved model of either kind. `shown_as`
    names `root` in errors (a model fetched into a temporary folder is named by its run)."""
    root = Path(root)
    if any((root / name).is_file() for name in DESCRIPTION_FILES):
        return root
    found = sorted({p.parent for name in DESCRIPTION_FILES for p in root.rglob(name)})
    if not found:
        raise KdError(f"{shown_as or root}: no saved kd model ({' or '.join(DESCRIPTION_FILES)}) found")
    return found[0]


def description_tasks(found: Path) -> list[str]:
    """The tasks, in head order, that the description file of the saved model in `found` (a folder
    `find_saved_tagger` gave) lists: read without loading any weights."""
    name = transformer.CONFIG_FILE if (found / transformer.CONFIG_FILE).is_file() else io.CONFIG_FILE
    return list(json.loads((found / name).read_text())["config"]["tasks"])


def saved_tasks(root: str | Path, shown_as: str | None = None) -> list[str] | None:
    """As `description_tasks` for the saved model under `root`, or None where its description cannot
    say (loading the model then says why, in its own words)."""
    try:
        return description_tasks(find_saved_tagger(root, shown_as)) or None
    except (KdError, OSError, ValueError, KeyError, TypeError):
        return None


def chosen_task(tasks: Sequence[str], task: str | None) -> str:
    """The task a model of these tasks tags with: `task`, which a multi-task model needs (one line, exit 2)."""
    if task is None and len(tasks) > 1:
        raise KdError(f"the model tags several corpora ({', '.join(tasks)}): choose one with --task")
    if task is not None and task not in tasks:
        raise KdError(f"--task {task}: the model has no such task; it has {', '.join(tasks)}")
    return task or tasks[0]


def load_saved_tagger(directory: str | Path, device: str | torch.device = "cpu",
                      shown_as: str | None = None) -> SavedModel | SavedTransformer:
    """The saved model under `directory`, whichever its kind; neither kind unpickles anything."""
    root = Path(directory)
    found = find_saved_tagger(root, shown_as)
    if not (found / transformer.CONFIG_FILE).is_file():
        return load_model(root, device, shown_as=shown_as)
    where = str(found) if shown_as is None else shown_as if found == root else f"{shown_as}/{found.relative_to(root)}"
    model, tags = load_transformer(found, device, shown_as=where)
    return SavedTransformer(model=model, tags=tags)


class SavedTagger:
    def __init__(self, directory: str | Path | SavedModel | SavedTransformer, device: str | torch.device = "cpu",
                 task: str | None = None, precision: str = "fp32") -> None:
        """`directory`: a saved model's folder (either kind), or the model already loaded."""
        saved = directory if isinstance(directory, (SavedModel, SavedTransformer)) else \
            load_saved_tagger(directory, device)
        self.saved = saved
        self.model = saved.model
        self.vocabularies = saved.vocabularies if isinstance(saved, SavedModel) else None
        self.device = torch.device(device)
        self.task = chosen_task(self.model.task_names, task)
        self.precision = precision

    def tag(self, sentences: Sequence[Sequence[str]], batch_tokens: int = PREDICT_BATCH_TOKENS,
            source: str | Path | None = None) -> list[list[str]]:
        """One tag per token of every sentence. A transformer refuses (SentenceTooLong) a sentence
        with more words than its encoder has positions, numbered among `sentences` and named by the
        file they came from, `source`."""
        return self.tag_with_scores(sentences, batch_tokens, with_scores=False, source=source)[0]

    @torch.no_grad()
    def tag_with_scores(self, sentences: Sequence[Sequence[str]], batch_tokens: int = PREDICT_BATCH_TOKENS,
                        with_scores: bool = True, source: str | Path | None = None,
                        ) -> tuple[list[list[str]], list[list[float]] | None]:
        """As `tag`, and each token's probability of its tag (softmax probability, or CRF marginal)."""
        try:
            return tag_non_empty(sentences, with_scores,
                                 lambda chosen: self._decode(chosen, batch_tokens, with_scores))
        except SentenceTooLong as error:  # numbered among the non-empty sentences: among all of them here
            non_empty = [i for i, tokens in enumerate(sentences) if len(tokens) > 0]
            raise SentenceTooLong(non_empty[error.index], error.words, error.limit, source) from None

    def _decode(self, chosen: list, batch_tokens: int, with_scores: bool) -> ScoredTags:
        if isinstance(self.saved, SavedTransformer):
            # The decoding the teacher's own evaluation uses (transformer_job.predict_transformer_tags):
            # each word's first sub-word, then softmax argmax or CRF Viterbi by the head.
            dataset, tag_names, extra = self.model.encode(chosen), self.saved.tags[self.task], ()
        else:
            dataset = EncodedDataset(chosen, self.vocabularies, self.task, with_tags=False)
            tag_names = self.vocabularies.tags[self.task]
            extra = (dataset_form_table(self.model, dataset, self.device, self.precision),)
        return decode_scored_in_batches(self.model, dataset, tag_names, self.task,
                                        DecodeSettings(self.device, self.precision, batch_tokens), extra, with_scores)
