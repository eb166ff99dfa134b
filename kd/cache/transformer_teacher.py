"""A fine-tuned Hugging Face encoder (`kd train-teacher --kind transformer`) as a teacher. It offers
the logits and marginals every tagger has, and `encoder`: the encoder's last hidden state at each
word's first sub-word, which students match through their projection (`--loss encoder`)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from kd.cache.protocol import LOGIT_LAYERS, Layer, ModuleTeacher, layer_table, run_corpora
from kd.data.types import Sentence
from kd.errors import FieldError
from kd.tracking.logged_models import load_logged_tagger


@dataclass
class TransformerTeacher(ModuleTeacher):
    run_id: str
    model: Any  # kd.models.transformer.TransformerTagger
    tag_lists: dict[str, list[str]]
    corpora: list[str]
    data_dir: str | None

    kind: ClassVar[str] = "transformer"
    layers: ClassVar[dict[str, Layer]] = layer_table(
        *LOGIT_LAYERS,
        Layer("encoder", lambda t, task: t.model.config.hidden_size, lambda t, task, out: out.encoder_hidden.float()))

    @classmethod
    def load(cls, run_id: str, run: Any, tracking_uri: str, device: torch.device) -> "TransformerTeacher":
        from kd.models.inference import SavedTransformer
        from kd.models.transformer import CONFIG_FILE

        saved = load_logged_tagger(run_id, tracking_uri, device)  # the same loading as `kd predict`
        if not isinstance(saved, SavedTransformer):
            raise FieldError("teacher_runs", run_id, f"the run's model has no {CONFIG_FILE}")
        corpora, data_dir = run_corpora(run)
        return cls(run_id=run_id, model=saved.model, tag_lists=saved.tags, corpora=corpora, data_dir=data_dir)

    def tags(self, task: str) -> list[str]:
        return list(self.tag_lists[task])

    def prepare(self, task: str, sentences: Sequence[Sentence], device: torch.device, precision: str) -> Any:
        self.model.eval()
        return task, self.model.encode(list(sentences))
