"""A Hugging Face encoder (BERT family) as a multi-task token classifier: the shared encoder, then
per corpus a linear layer to the tags (softmax, or a linear-chain CRF).

Words are split into sub-words by the encoder's tokenizer; **a word's output is its first
sub-word's** (its last hidden state and logits), so everything downstream (losses, caches,
students, scoring) works per word as for the BiLSTM. A word the tokenizer drops entirely (a
zero-width space) becomes the unknown token, so every word has a first sub-word. A sentence
longer than the encoder's positions is cut to one sub-word per word; one with more words than
positions is refused.

`transformers` is an optional dependency (`pip install 'kd[transformer]'`): it is imported only
when a transformer is built or loaded.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kd.data.types import Sentence
from kd.errors import KdError
from kd.models.crf import CRF
from kd.models.tagger import HeadsByTask
from kd.models.weights import check_safetensors, check_weights_folder
from kd.utils.atomic import atomic_directory

FORMAT_VERSION = 1
CONFIG_FILE = "transformer.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FOLDER = "tokenizer"
WORD_OUTPUT = "first-subword"  # which sub-word speaks for a word; logged with every transformer run


class SentenceTooLong(KdError):
    """A sentence with more words than the encoder has positions; `index` counts from 0 among the
    sentences given, `source` (the file they came from) is named first where known."""

    def __init__(self, index: int, words: int, limit: int, source: str | Path | None = None) -> None:
        self.index, self.words, self.limit = index, words, limit
        where = f"{source}: " if source else ""
        super().__init__(f"{where}sentence {index + 1} has {words} words; the encoder takes at most {limit} per sentence")


def require_transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise KdError("--kind transformer needs the transformers package: pip install 'kd[transformer]'") from None
    return transformers


@dataclass
class TransformerConfig:
    """Everything needed to rebuild the module; saved as JSON beside the weights."""

    tasks: dict[str, int]  # task name -> number of tags, in head order
    encoder: dict[str, Any]  # the Hugging Face config of the encoder (config.to_dict())
    base: str = ""  # the folder or hub id it was fine-tuned from, for the record
    output: str = "softmax"
    dropout: float = 0.1
    word_output: str = WORD_OUTPUT
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def hidden_size(self) -> int:
        return int(self.encoder["hidden_size"])

    @property
    def max_positions(self) -> int:
        return int(self.encoder.get("max_position_embeddings", 512))


@dataclass
class TransformerOutput:
    logits: torch.Tensor  # (B, T, K) per word
    encoder_hidden: torch.Tensor  # (B, T, H) the encoder's last hidden state at each word's first sub-word
    mask: torch.Tensor  # (B, T) bool, True at real words


@dataclass
class SubwordBatch:
    input_ids: torch.Tensor  # (B, P) sub-word ids with [CLS] ... [SEP], padded
    attention_mask: torch.Tensor  # (B, P)
    first_piece: torch.Tensor  # (B, T) position of each word's first sub-word in its row (0 at padding)
    lengths: torch.Tensor  # (B,) words, on CPU, decreasing
    mask: torch.Tensor  # (B, T) bool
    tags: torch.Tensor | None  # (B, T)
    sentence_ids: torch.Tensor  # (B,) index into the dataset

    @property
    def num_tokens(self) -> int:
        return int(self.lengths.sum())

    def to(self, device: torch.device | str) -> "SubwordBatch":
        def move(value):
            return value.to(device, non_blocking=True) if value is not None else None
        return SubwordBatch(move(self.input_ids), move(self.attention_mask), move(self.first_piece), self.lengths,
                            move(self.mask), move(self.tags), self.sentence_ids)


class SubwordDataset:
    """Sentences as sub-word ids, each word split on its own (as `is_split_into_words` does), with
    the position of every word's first sub-word. Same `lengths` (in words) and `batch` as
    kd.data.batching.EncodedDataset, so the epoch plans and the loop use it unchanged."""

    def __init__(self, sentences: list[Sentence], tokenizer: Any, tags: list[str] | None, max_positions: int) -> None:
        self.sentences = list(sentences)
        self.lengths = np.array([len(s) for s in self.sentences], dtype=np.int64)
        forms = sorted({token for s in self.sentences for token in s.tokens})
        pieces = tokenizer(forms, add_special_tokens=False)["input_ids"] if forms else []
        unknown = tokenizer.unk_token_id
        pieces_of = {form: (ids or [unknown]) for form, ids in zip(forms, pieces)}
        self.cls, self.sep, self.pad = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id
        self.rows: list[np.ndarray] = []
        self.firsts: list[np.ndarray] = []
        for number, sentence in enumerate(self.sentences, 1):
            word_pieces = [pieces_of[token] for token in sentence.tokens]
            if sum(len(p) for p in word_pieces) + 2 > max_positions:
                # Too long whole: the first sub-word of each word is what the outputs are read from.
                word_pieces = [p[:1] for p in word_pieces]
            if len(word_pieces) + 2 > max_positions:
                raise SentenceTooLong(number - 1, len(word_pieces), max_positions - 2)
            sizes = np.array([len(p) for p in word_pieces], dtype=np.int64)
            self.firsts.append(1 + np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64))
            self.rows.append(np.array([self.cls, *(i for p in word_pieces for i in p), self.sep], dtype=np.int64))
        self.tag_ids = None
        if tags is not None:
            index = {tag: i for i, tag in enumerate(tags)}
            # Unseen tags (evaluation splits only) map to O; scoring reads the gold strings.
            self.tag_ids = [np.array([index.get(t, 0) for t in s.tags], dtype=np.int64) for s in self.sentences]

    def __len__(self) -> int:
        return len(self.sentences)

    @property
    def num_tokens(self) -> int:
        return int(self.lengths.sum())

    def batch(self, sentence_ids: np.ndarray) -> SubwordBatch:
        """The padded batch of the given sentences, longest first (stable), as EncodedDataset."""
        ids = np.asarray(sentence_ids, dtype=np.int64)
        ids = ids[np.argsort(-self.lengths[ids], kind="stable")]
        lengths = self.lengths[ids]
        pieces = max(len(self.rows[i]) for i in ids)
        input_ids = np.full((len(ids), pieces), self.pad, dtype=np.int64)
        attention = np.zeros((len(ids), pieces), dtype=np.int64)
        first = np.zeros((len(ids), int(lengths.max())), dtype=np.int64)
        tags = np.zeros_like(first) if self.tag_ids is not None else None
        for row, i in enumerate(ids):
            input_ids[row, : len(self.rows[i])] = self.rows[i]
            attention[row, : len(self.rows[i])] = 1
            first[row, : lengths[row]] = self.firsts[i]
            if tags is not None:
                tags[row, : lengths[row]] = self.tag_ids[i]
        mask = np.arange(first.shape[1])[None, :] < lengths[:, None]
        return SubwordBatch(torch.from_numpy(input_ids), torch.from_numpy(attention), torch.from_numpy(first),
                            torch.from_numpy(lengths), torch.from_numpy(mask),
                            None if tags is None else torch.from_numpy(tags), torch.from_numpy(ids))


class TransformerHead(nn.Module):
    def __init__(self, hidden: int, num_tags: int, output: str) -> None:
        super().__init__()
        self.output = nn.Linear(hidden, num_tags)
        self.crf = CRF(num_tags) if output == "crf" else None


class TransformerTagger(HeadsByTask, nn.Module):
    def __init__(self, config: TransformerConfig, tokenizer: Any, encoder: nn.Module) -> None:
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        self.task_names = list(config.tasks)
        self.encoder = encoder
        self.dropout = nn.Dropout(config.dropout)
        # A ModuleList, not a ModuleDict keyed by task: corpus names may contain dots.
        self.heads = nn.ModuleList(TransformerHead(config.hidden_size, n, config.output) for n in config.tasks.values())

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.encoder.parameters())

    def encode(self, sentences: list[Sentence], tags: list[str] | None = None) -> SubwordDataset:
        """The sentences as sub-words; with `tags` (a task's tag list) their gold tag ids too."""
        return SubwordDataset(sentences, self.tokenizer, tags, self.config.max_positions)

    def forward(self, batch: SubwordBatch, task: str | None = None) -> TransformerOutput:
        task = task or self.task_names[0]
        states = self.encoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
        index = batch.first_piece.unsqueeze(2).expand(-1, -1, states.shape[2])
        words = torch.gather(states, 1, index)
        logits = self.head(task).output(self.dropout(words))
        return TransformerOutput(logits=logits, encoder_hidden=words, mask=batch.mask)

    def num_parameters(self, task: str | None = None) -> int:
        heads = [self.head(task)] if task is not None else list(self.heads)
        return sum(p.numel() for module in [self.encoder, *heads] for p in module.parameters())


def _encoder_from_config(transformers: Any, encoder_config: Any) -> nn.Module:
    try:
        # Token classification never reads the pooler; leaving it out keeps parameter counts honest.
        return transformers.AutoModel.from_config(encoder_config, add_pooling_layer=False)
    except TypeError:
        return transformers.AutoModel.from_config(encoder_config)


def build_transformer(base: str, tasks: dict[str, int], output: str, dropout: float, seed: int) -> TransformerTagger:
    """A pretrained encoder from `base` (a local folder, or a hub id where a hub is reachable) with
    fresh heads (deterministic for the seed)."""
    transformers = require_transformers()
    verbosity, bars = transformers.logging.get_verbosity(), transformers.utils.logging.is_progress_bar_enabled()
    # The load report lists the pooler weights left out on purpose, and a progress bar: noise in a kd run.
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    if Path(base).is_dir():
        check_weights_folder(Path(base), f"--base {base}")
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(base)
        encoder_config = transformers.AutoConfig.from_pretrained(base)
        torch.manual_seed(seed)
        try:  # safetensors only, also from a hub: never a pickle
            encoder = transformers.AutoModel.from_pretrained(base, add_pooling_layer=False, use_safetensors=True)
        except TypeError:
            encoder = transformers.AutoModel.from_pretrained(base, use_safetensors=True)
    except (OSError, ValueError) as error:
        raise KdError(f"--base {base}: cannot load a Hugging Face encoder ({str(error).splitlines()[0]})") from None
    finally:
        transformers.logging.set_verbosity(verbosity)
        if bars:
            transformers.utils.logging.enable_progress_bar()
    if not getattr(tokenizer, "is_fast", False) and tokenizer.unk_token_id is None:
        raise KdError(f"--base {base}: the tokenizer has no unknown token")
    config = TransformerConfig(tasks=dict(tasks), encoder=encoder_config.to_dict(), base=str(base), output=output,
                               dropout=dropout)
    torch.manual_seed(seed)
    return TransformerTagger(config, tokenizer, encoder)


def save_transformer(model: TransformerTagger, tags: dict[str, list[str]], directory: str | Path) -> Path:
    """`transformer.json` (config and tag lists), `model.safetensors`, and the tokenizer's files."""
    from safetensors.torch import save_model

    with atomic_directory(directory) as staging:
        description = {"format_version": FORMAT_VERSION, "config": asdict(model.config), "tags": tags}
        (staging / CONFIG_FILE).write_text(json.dumps(description, ensure_ascii=False))
        save_model(model, str(staging / WEIGHTS_FILE))
        model.tokenizer.save_pretrained(str(staging / TOKENIZER_FOLDER))
    return Path(directory)


def load_transformer(directory: str | Path, device: str | torch.device = "cpu",
                     shown_as: str | None = None) -> tuple[TransformerTagger, dict[str, list[str]]]:
    """The model and its tag lists. Safetensors and JSON only: loading never unpickles."""
    transformers = require_transformers()
    from safetensors.torch import load_model

    directory = Path(directory)
    where = shown_as or str(directory)
    try:
        description = json.loads((directory / CONFIG_FILE).read_text())
        if description.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"unsupported format {description.get('format_version')}")
        config = TransformerConfig(**description["config"])
        encoder_config = transformers.AutoConfig.for_model(**config.encoder)
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(directory / TOKENIZER_FOLDER))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise KdError(f"{where}/{CONFIG_FILE}: invalid transformer model ({str(error).splitlines()[0]})") from None
    model = TransformerTagger(config, tokenizer, _encoder_from_config(transformers, encoder_config))
    check_safetensors(directory / WEIGHTS_FILE, f"{where}/{WEIGHTS_FILE}")
    try:
        load_model(model, str(directory / WEIGHTS_FILE), device=str(device))
    except (OSError, RuntimeError, ValueError) as error:
        raise KdError(f"{where}/{WEIGHTS_FILE}: cannot load weights ({str(error).splitlines()[0]})") from None
    model.to(device).eval()
    return model, {task: list(tags) for task, tags in description["tags"].items()}
