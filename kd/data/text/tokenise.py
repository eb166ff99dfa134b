"""Text -> sentences of tokens with character offsets, tokenised the way kd's CoNLL corpora are.

The ten corpora split every punctuation character off as a token of its own (`IL - 2`,
`5 - fluorouracil`, `acyl - plasmins`) and keep runs of letters and digits whole (`3beta`):
outside CRAFT's few `+/-` and `-->`, every corpus token is one or the other, which is the rule
here. Sentence boundaries come from blingfire (offsets included). Measured on all ten corpora
(bench/README.md, "Transfer text", part 4): blingfire's boundaries agreed best of the libraries
(boundary F1 95.3-98.9 against syntok's 90.4-97.5 and pysbd's 90.5-98.1); the libraries' own
tokens agreed less than the corpora's rule (blingfire 99.9, syntok 92-96, NLTK 86-93 token F1),
as they keep hyphenated words and decimals whole.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import blingfire

# A run of letters and digits, or any other single non-space character.
_CORPUS_TOKEN = re.compile(r"[^\W_]+|\S")


@dataclass(frozen=True)
class Token:
    """A token and where it lies in the text: `text[start:end] == token.text`."""

    text: str
    start: int
    end: int


def tokenise(text: str, offset: int = 0) -> list[Token]:
    """The corpus-style tokens of a piece of text (no sentence splitting); offsets are into the
    text, plus `offset`."""
    return [Token(match.group(), offset + match.start(), offset + match.end())
            for match in _CORPUS_TOKEN.finditer(text)]


def split_sentences(text: str) -> list[list[Token]]:
    """The sentences of `text`, each a list of corpus-style tokens with their offsets in `text`."""
    if not text.strip():
        return []  # blingfire returns one empty sentence for blank text
    _, spans = blingfire.text_to_sentences_and_offsets(text)
    sentences = [tokenise(text[start:end], start) for start, end in spans]
    return [sentence for sentence in sentences if sentence]


def sentence_words(text: str) -> list[tuple[str, ...]]:
    """The sentences of `text` as tuples of token strings (what a training file holds)."""
    return [tuple(token.text for token in sentence) for sentence in split_sentences(text)]
