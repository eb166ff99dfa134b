"""Plain data types shared by readers, vocabularies and batching."""
from __future__ import annotations

from dataclasses import dataclass

SPLITS = ("train", "devel", "test")


@dataclass(frozen=True)
class Sentence:
    """One sentence: tokens and their tags, the tags already normalised to IOB2."""

    tokens: tuple[str, ...]
    tags: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.tokens)
