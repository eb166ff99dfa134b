"""Raw text in, entities out: documents split into sentences and corpus-style tokens with the
tokeniser of `kd data text` (kd.data.text.tokenise), tagged by any kd tagger, and the IOB2 tags
turned back into character spans of the document.

Offsets count Python characters (Unicode code points) of the document as given, so that
`text[start:end] == entity.text`. Entities are the spans that kd's evaluation counts (seqeval's
strict IOB2: an entity starts at B-, continues over I- of its type; a stray I- starts none).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from kd.data.batching import BATCH_TOKEN_BUDGET
from kd.data.iob2 import iob2_spans
from kd.data.conll import decode_utf8, read_file_bytes
from kd.data.text.tokenise import Token, split_sentences
from kd.errors import DataError, KdError


@dataclass(frozen=True)
class Entity:
    """A tagged span of a document: `document[start:end] == text`; `score` is the mean over its
    tokens of the probability of the token's tag (None for a tagger that gives none)."""

    start: int
    end: int
    label: str
    text: str
    score: float | None = None

    def as_json(self) -> dict:
        record = asdict(self)
        if self.score is None:
            del record["score"]
        return record


class DocumentTooLong(KdError):
    """A document with more tokens than one request may tag; `index` counts the documents given."""

    def __init__(self, index: int, tokens: int, budget: int) -> None:
        self.index = index
        self.tokens = tokens
        super().__init__(f"a document of {tokens:,} tokens, more than the token budget of {budget:,}: "
                         "split it into shorter documents")


class TokenTagger(Protocol):
    def tag(self, sentences: Sequence[Sequence[str]]) -> list[list[str]]: ...


def sentence_entities(document: str, tokens: Sequence[Token], tags: Sequence[str],
                      scores: Sequence[float] | None) -> list[Entity]:
    """The entities of one tagged sentence of `document`, as character spans of the document."""
    entities = []
    for first, after, label in iob2_spans(tags):
        start, end = tokens[first].start, tokens[after - 1].end
        score = None if scores is None else sum(scores[first:after]) / (after - first)
        entities.append(Entity(start, end, label, document[start:end], score))
    return entities


def split_documents(documents: Sequence[str], budget: int = BATCH_TOKEN_BUDGET) -> list[list[list[Token]]]:
    """Each document's sentences of tokens (kd.data.text.tokenise), within the budget (`check_budget`)."""
    split = [split_sentences(document) for document in documents]
    check_budget(split, budget)
    return split


def check_budget(split: Sequence[Sequence[Sequence[Token]]], budget: int = BATCH_TOKEN_BUDGET) -> None:
    """Refuses (DocumentTooLong) a document of more than `budget` tokens, the batch token budget:
    a request's documents are tagged together, and a document that size is a book, or a file
    read as one line by mistake."""
    for index, sentences in enumerate(split):
        tokens = sum(len(sentence) for sentence in sentences)
        if tokens > budget:
            raise DocumentTooLong(index, tokens, budget)


def tag_documents(tagger: TokenTagger, documents: Sequence[str],
                  budget: int = BATCH_TOKEN_BUDGET) -> list[list[Entity]]:
    """The entities of every document, in order."""
    return tag_split_documents(tagger, documents, split_documents(documents, budget))


def tag_split_documents(tagger: TokenTagger, documents: Sequence[str],
                        split: Sequence[Sequence[Sequence[Token]]]) -> list[list[Entity]]:
    """The entities of documents already split into sentences of tokens with offsets. All sentences
    of all documents are tagged together (the tagger batches them by length); a tagger with
    `tag_with_scores` gives scores."""
    sentences = [sentence for document in split for sentence in document]
    words = [[token.text for token in sentence] for sentence in sentences]
    if hasattr(tagger, "tag_with_scores"):
        tags, scores = tagger.tag_with_scores(words)
    else:
        tags, scores = tagger.tag(words), None
    entities: list[list[Entity]] = []
    position = 0
    for document, document_sentences in zip(documents, split):
        found = []
        for tokens in document_sentences:
            found += sentence_entities(document, tokens, tags[position], None if scores is None else scores[position])
            position += 1
        entities.append(found)
    return entities


def read_documents(path: str | Path) -> list[tuple[int, str]]:
    """The documents of a UTF-8 text file, one a line (as `kd data text` reads plain text: a
    sentence never spans lines), with their line numbers; blank lines are skipped. Refuses
    (DataError) a file that is not UTF-8 or holds no text."""
    lines = decode_utf8(path, read_file_bytes(path)).split("\n")
    documents = [(number, line.removesuffix("\r")) for number, line in enumerate(lines, 1) if line.strip()]
    if not documents:
        raise DataError(path, "no text to tag (the file is empty or blank)")
    return documents


def tag_file(tagger: TokenTagger, path: str | Path, documents: Sequence[tuple[int, str]],
             budget: int = BATCH_TOKEN_BUDGET) -> list[dict]:
    """`{"line": N, "entities": [...]}` for each of the file's documents (`read_documents`), offsets
    into that line; a line longer than the budget is refused naming the file and line."""
    try:
        entities = tag_documents(tagger, [text for _, text in documents], budget)
    except DocumentTooLong as error:
        raise DataError(path, str(error), documents[error.index][0]) from None
    return [{"line": line, "entities": [entity.as_json() for entity in found]}
            for (line, _), found in zip(documents, entities)]
