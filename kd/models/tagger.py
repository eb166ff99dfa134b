"""The BiLSTM tagger of the method, for one task (single-task model) or many (the teacher).

word embedding + character BiLSTM -> shared BiLSTM -> per task: BiLSTM -> hidden layer -> logits,
followed by softmax or a linear-chain CRF per task.

Dropout acts at three places: on the embeddings entering the shared BiLSTM, on the shared states
entering each task BiLSTM, and on the hidden layer entering the output layer. A fourth, on the task
BiLSTM states entering the hidden layer, cost 1.3 points of strict test F1 (1.6 conlleval) after
3 epochs on NCBI-disease (means of 5 seeds, bench/README.md) and is not used.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from kd.data.batching import Batch
from kd.models.bilstm import BiLSTM, reversal_index
from kd.models.crf import CRF
from kd.option_schema import check_fields, default, names_of

MODEL_OPTIONS = names_of("model")
# Upper form lengths of the character BiLSTM's groups (see Tagger.encode_forms).
CHAR_GROUP_BOUNDS = torch.tensor([4, 8, 16])
# Forms per character BiLSTM call when a whole dataset's forms are encoded (Tagger.encode_form_table).
FORM_TABLE_CHUNK = 8192


@dataclass
class TaggerConfig:
    """A tagger's options (kd.option_schema's model options, what a user gives) and, once built for
    its data (kd.training.job_definition.build_tagger), its tasks and vocabulary sizes: everything needed to
    rebuild the module, saved as JSON beside the weights."""

    output: str = default("output")
    word_dim: int = default("word_dim")
    char_dim: int = default("char_dim")
    char_hidden: int = default("char_hidden")
    shared_hidden: int = default("shared_hidden")
    task_hidden: int = default("task_hidden")
    hidden_dim: int = default("hidden_dim")
    dropout: float = default("dropout")
    embeddings: str | None = default("embeddings")
    tasks: dict[str, int] = field(default_factory=dict)  # task name -> number of tags, in head order
    num_words: int = 0
    num_chars: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_fields(self)

    def options(self) -> dict[str, Any]:
        """The options a user gives, without what the data decides: what a run logs and identifies."""
        return {name: getattr(self, name) for name in MODEL_OPTIONS}

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "TaggerConfig":
        return cls(**data)


@dataclass
class TaggerOutput:
    """Per-token outputs of one task's head; distillation matches any of them."""

    logits: torch.Tensor  # (B, T, K) emission scores
    task_hidden: torch.Tensor  # (B, T, 2 * task_hidden)
    shared_hidden: torch.Tensor  # (B, T, 2 * shared_hidden)
    mask: torch.Tensor  # (B, T) bool, True at real tokens


class Dropout(nn.Module):
    """Inverted dropout, as nn.Dropout, with its mask drawn from 16-bit random numbers, four per
    64-bit draw of the generator. On CPU the generator, one draw per element behind nn.Dropout
    and torch.rand, was most of dropout's cost (bench/README.md). The drop rate is p rounded to
    a multiple of 1/65536 (0.5 exactly); kept values are scaled by the exact inverse of the keep
    rate."""

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout must be in [0, 1), not {p}")
        self.p = p
        # Keep a value when its int16 draw (uniform over [-32768, 32767]) is >= threshold.
        self.threshold = min(round(p * 65536) - 32768, 32767)
        self.scale = 65536 / (32768 - self.threshold)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        count = x.numel()
        draws = torch.empty((count + 3) // 4, dtype=torch.int64, device=x.device)
        # The full 64-bit range: random_() without bounds leaves the top bit 0, which would
        # bias every fourth 16-bit lane.
        draws.random_(torch.iinfo(torch.int64).min, None)
        bits = draws.view(torch.int16)[:count].view(x.shape)
        # One float mask holding 0 or the scale: the backward pass is then a single product too.
        scaled_keep = (bits >= self.threshold).to(x.dtype).mul_(self.scale)
        return x * scaled_keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class TaskHead(nn.Module):
    def __init__(self, config: TaggerConfig, num_tags: int) -> None:
        super().__init__()
        self.lstm = BiLSTM(2 * config.shared_hidden, config.task_hidden)
        self.hidden = nn.Linear(2 * config.task_hidden, config.hidden_dim)
        self.output = nn.Linear(config.hidden_dim, num_tags)
        self.crf = CRF(num_tags) if config.output == "crf" else None


class HeadsByTask:
    """Looking up a multi-task module's head by task name (`task_names`, `heads` in that order),
    its CRF, and decoding; shared by the BiLSTM tagger and the transformer."""

    task_names: list[str]
    heads: nn.ModuleList

    def head(self, task: str) -> Any:
        try:
            return self.heads[self.task_names.index(task)]
        except ValueError:
            raise KeyError(f"the model has no task {task!r}; it has {', '.join(self.task_names)}") from None

    def crf(self, task: str) -> CRF | None:
        return self.head(task).crf

    @torch.no_grad()
    def decode(self, output: Any, task: str | None = None) -> torch.Tensor:
        """Best tag ids (B, T): Viterbi for a CRF head, per-token argmax otherwise."""
        crf = self.crf(task or self.task_names[0])
        if crf is None:
            return output.logits.argmax(dim=2)
        return crf.decode(output.logits.float(), output.mask)


class Tagger(HeadsByTask, nn.Module):
    def __init__(self, config: TaggerConfig, word_vectors: np.ndarray | None = None) -> None:
        super().__init__()
        if not config.tasks:
            raise ValueError("a tagger needs at least one task")
        self.config = config
        self.task_names = list(config.tasks)
        self.word_embedding = nn.Embedding(config.num_words, config.word_dim, padding_idx=0)
        if word_vectors is not None:
            if word_vectors.shape != (config.num_words, config.word_dim):
                raise ValueError(f"word vectors have shape {word_vectors.shape}, expected "
                                 f"{(config.num_words, config.word_dim)}")
            self.word_embedding.weight.data.copy_(torch.from_numpy(word_vectors))
        self.char_embedding = nn.Embedding(config.num_chars, config.char_dim, padding_idx=0)
        self.char_lstm = BiLSTM(config.char_dim, config.char_hidden)
        self.shared_lstm = BiLSTM(config.word_dim + 2 * config.char_hidden, config.shared_hidden)
        # A ModuleList, not a ModuleDict keyed by task: corpus names may contain dots.
        self.heads = nn.ModuleList(TaskHead(config, n) for n in config.tasks.values())
        self.dropout = Dropout(config.dropout)

    def shared_parameters(self) -> list[nn.Parameter]:
        """The parameters every task's steps update (everything but the heads)."""
        return [p for module in (self.word_embedding, self.char_embedding, self.char_lstm, self.shared_lstm)
                for p in module.parameters()]

    def encode_forms(self, form_chars: torch.Tensor, form_lengths: torch.Tensor) -> torch.Tensor:
        """Character BiLSTM summary (U, 2 * char_hidden) of each distinct form.

        Forms run in groups of similar length (1-4, 5-8, 9-16, 17+ characters), each padded only
        to its own longest form: padding every form to the batch's longest costs about 3x the
        real character steps. Batches list forms shortest first, so each group is a slice; other
        orders are sorted here and the result put back in the given order."""
        groups = torch.bucketize(form_lengths, CHAR_GROUP_BOUNDS)
        if len(form_lengths) and not bool((groups[1:] >= groups[:-1]).all()):
            order = torch.argsort(form_lengths, stable=True)
            vectors = self.encode_forms(form_chars[order.to(form_chars.device)], form_lengths[order])
            return vectors[torch.argsort(order).to(vectors.device)]
        parts, start = [], 0
        for group_size in torch.bincount(groups).tolist():
            if group_size == 0:
                continue
            lengths = form_lengths[start:start + group_size]
            width = int(lengths.max())
            chars = form_chars[start:start + group_size, :width]
            reverse = reversal_index(lengths, width).to(chars.device)
            parts.append(self.char_lstm.final_states(self.char_embedding(chars), lengths, reverse))
            start += group_size
        return torch.cat(parts) if len(parts) != 1 else parts[0]

    @torch.no_grad()
    def encode_form_table(self, form_chars: torch.Tensor, form_lengths: torch.Tensor,
                          chunk: int = FORM_TABLE_CHUNK) -> torch.Tensor:
        """`encode_forms` of every form of a dataset (rows of EncodedDataset.form_chars, on the
        model's device), for inference: batches cut from a dataset share many forms (the 4,096-token
        prediction batches of NCBI-disease test encode 2.3x its distinct forms), so encoding each
        form once halves the character BiLSTM's work. Forms run shortest first, `chunk` at a time."""
        order = torch.argsort(form_lengths, stable=True)
        parts = []
        for start in range(0, len(order), chunk):
            rows = order[start:start + chunk]
            lengths = form_lengths[rows]
            chars = form_chars[rows.to(form_chars.device), : int(lengths.max())]
            parts.append(self.encode_forms(chars, lengths))
        if not parts:
            return torch.zeros(0, 2 * self.config.char_hidden, device=form_chars.device)
        return torch.cat(parts)[torch.argsort(order).to(form_chars.device)]

    def encode_shared(self, batch: Batch, form_table: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Shared BiLSTM states (B, T, 2H) and the batch's reversal index, reusable across heads.
        `form_table`: the `encode_forms` vectors of every form of the batch's dataset, by form
        id, computed once (inference); without it the batch's own forms are encoded."""
        if form_table is None:
            form_vectors = self.encode_forms(batch.form_chars, batch.form_lengths)
        else:
            form_vectors = form_table[batch.form_ids.to(form_table.device)]
        # An embedding lookup, not form_vectors[form_index]: the backward pass of advanced indexing
        # sums the gradients of repeated forms in a thread-dependent order on CPU, which made
        # multi-threaded training differ between processes; the embedding backward does not.
        token_chars = F.embedding(batch.form_index, form_vectors)
        embedded = torch.cat([self.word_embedding(batch.words), token_chars.to(form_vectors.dtype)], dim=2)
        reverse = reversal_index(batch.lengths, batch.words.shape[1]).to(batch.words.device)
        shared = self.shared_lstm(self.dropout(embedded), reverse)
        return shared, reverse

    def run_head(self, task: str, shared: torch.Tensor, reverse: torch.Tensor, mask: torch.Tensor) -> TaggerOutput:
        head = self.head(task)
        task_states = head.lstm(self.dropout(shared), reverse)
        hidden = torch.relu(head.hidden(task_states))
        logits = head.output(self.dropout(hidden))
        return TaggerOutput(logits=logits, task_hidden=task_states, shared_hidden=shared, mask=mask)

    def forward(self, batch: Batch, task: str | None = None, form_table: torch.Tensor | None = None) -> TaggerOutput:
        if task is None:
            if len(self.task_names) != 1:
                raise ValueError("a multi-task model needs the task name")
            task = self.task_names[0]
        shared, reverse = self.encode_shared(batch, form_table)
        return self.run_head(task, shared, reverse, batch.mask)

    def num_parameters(self, task: str | None = None) -> int:
        """Parameters used by one task (all shared ones plus its own head), or by all tasks."""
        heads = [self.head(task)] if task is not None else list(self.heads)
        shared = [self.word_embedding, self.char_embedding, self.char_lstm, self.shared_lstm]
        return sum(p.numel() for module in shared + heads for p in module.parameters())
