"""Text -> sentences of tokens with character offsets, tokenised the way kd's CoNLL corpora are.

The ten corpora split every punctuation character off as a token of its own (`IL - 2`,
`5 - fluorouracil`, `acyl - plasmins`) and keep runs of letters and digits whole (`3beta`):
outside CRAFT's few `+/-` and `-->`, every corpus token is one or the other. Sentence boundaries
come from syntok's segmenter (maintained, pure Python, keeps offsets); its tokens are then cut at
every punctuation character. Measured against all ten corpora (bench/README.md, "Transfer text",
part 4): this agrees with the corpora's tokens better than syntok's, blingfire's or NLTK's own
tokens, which keep hyphenated words and decimals whole.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import syntok.segmenter

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
    sentences: list[list[Token]] = []
    for paragraph in syntok.segmenter.analyze(text):
        for sentence in paragraph:
            if not sentence:
                continue
            start = sentence[0].offset
            end = sentence[-1].offset + len(sentence[-1].value)
            tokens = tokenise(text[start:end], start)
            if tokens:
                sentences.append(tokens)
    return sentences


def sentence_words(text: str) -> list[tuple[str, ...]]:
    """The sentences of `text` as tuples of token strings (what a training file holds)."""
    return [tuple(token.text for token in sentence) for sentence in split_sentences(text)]
