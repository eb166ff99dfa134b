"""Vocabularies for words, characters and tags, saved with every model so a reloaded model
maps text to exactly the indices it was trained with."""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from kd.data.types import Sentence

PAD = "<pad>"
UNK = "<unk>"


class Vocabulary:
    """An ordered token <-> index map. Index 0 is padding and index 1 the unknown token, so
    every unseen word or character has a place to go."""

    def __init__(self, items: Iterable[str]) -> None:
        self.items: list[str] = [PAD, UNK]
        self.index: dict[str, int] = {PAD: 0, UNK: 1}
        for item in items:
            if item not in self.index:
                self.index[item] = len(self.items)
                self.items.append(item)

    def __len__(self) -> int:
        return len(self.items)

    def __contains__(self, item: str) -> bool:
        return item in self.index

    def lookup(self, item: str) -> int:
        return self.index.get(item, 1)

    def to_list(self) -> list[str]:
        return list(self.items[2:])

    @classmethod
    def from_list(cls, items: list[str]) -> "Vocabulary":
        return cls(items)


@dataclass
class Vocabularies:
    """Words and characters are shared by all tasks; tags belong to one task each."""

    words: Vocabulary
    chars: Vocabulary
    tags: dict[str, list[str]]

    def to_json(self) -> dict:
        return {"words": self.words.to_list(), "chars": self.chars.to_list(), "tags": self.tags}

    @classmethod
    def from_json(cls, data: Mapping) -> "Vocabularies":
        return cls(
            words=Vocabulary.from_list(list(data["words"])),
            chars=Vocabulary.from_list(list(data["chars"])),
            tags={task: list(tags) for task, tags in data["tags"].items()},
        )


def tag_list(sentences: Iterable[Sentence]) -> list[str]:
    """Tags sorted with O first, then by entity type and prefix, so tag ids do not depend on
    the order sentences happen to be read in."""
    tags = {tag for sentence in sentences for tag in sentence.tags}
    tags.add("O")
    return sorted(tags, key=lambda t: (t != "O", t[2:], t[:2]))


def build_vocabularies(training_data: Mapping[str, Iterable[Sentence]]) -> Vocabularies:
    """Builds the vocabularies from training sentences of every task (one task for a
    single-task model). Words and characters are counted in first-seen order across tasks in
    the given order, which keeps the vocabulary deterministic."""
    materialised = {task: list(sentences) for task, sentences in training_data.items()}
    words = Vocabulary(tok for sents in materialised.values() for s in sents for tok in s.tokens)
    chars = Vocabulary(ch for sents in materialised.values() for s in sents for tok in s.tokens for ch in tok)
    tags = {task: tag_list(sents) for task, sents in materialised.items()}
    return Vocabularies(words=words, chars=chars, tags=tags)
