"""Plain data types shared by readers, vocabularies and batching."""
from __future__ import annotations

from dataclasses import dataclass

SPLITS = ("train", "devel", "test")
# Where a cache keeps a teacher's outputs for a student's extra sentences without gold tags
# (`--unlabelled FILE`): beside a corpus's splits, never one of them.
UNLABELLED_SPLIT = "unlabelled"


@dataclass(frozen=True)
class Sentence:
    """One sentence: tokens and their tags, the tags already normalised to IOB2; no tags at all
    (`tags == ()`) for an unlabelled sentence, which a student learns from its teacher alone."""

    tokens: tuple[str, ...]
    tags: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def labelled(self) -> bool:
        return len(self.tags) == len(self.tokens)
