"""Part 4 of bench/transfer.py: how closely tokenisers and sentence splitters reproduce the corpora.

Tokens: each corpus sentence is detokenised (tokens joined by spaces, then the spaces a writer would
not type removed: before `. , ; : ) ] } % ? !`, after `( [ {`, around `-`, `/` and `'`), re-tokenised
by each candidate, and the candidate's tokens are compared with the corpus's as character spans of the
detokenised text: token F1 (a token counts when both ends match) and the share of sentences whose
tokens all match. The detokeniser is a guess at the original spacing; its rules favour no candidate.

Sentences: windows of 5 consecutive corpus sentences (the corpora keep an abstract's sentences in
order) are detokenised and joined by one space; boundary F1 of each splitter's sentence ends against
the corpus's.
"""
from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from kd.data.conll import read_conll

NO_SPACE_BEFORE = set(".,;:)]}%?!")
NO_SPACE_AFTER = set("([{")
JOINERS = set("-/'")
WINDOW = 5


def detokenise(tokens: Sequence[str]) -> tuple[str, list[tuple[int, int]]]:
    """The sentence as a writer would type it, and each token's span in it."""
    text, spans = "", []
    for index, token in enumerate(tokens):
        previous = tokens[index - 1] if index else None
        glued = (previous is None or token in NO_SPACE_BEFORE or previous in NO_SPACE_AFTER
                 or token in JOINERS or previous in JOINERS)
        text += "" if glued else " "
        spans.append((len(text), len(text) + len(token)))
        text += token
    return text, spans


def spans_in_order(text: str, words: Sequence[str]) -> list[tuple[int, int]]:
    """Spans of tokens given without offsets (blingfire), found left to right."""
    spans, position = [], 0
    for word in words:
        start = text.find(word, position)
        if start < 0:
            continue  # a tokeniser that rewrote the text: that token cannot match
        spans.append((start, start + len(word)))
        position = start + len(word)
    return spans


def tokenisers() -> dict[str, Callable[[str], list[tuple[int, int]]]]:
    import blingfire
    import syntok.tokenizer
    from nltk.tokenize import TreebankWordTokenizer

    from kd.data.text.tokenise import split_sentences

    syntok_tokenizer, treebank = syntok.tokenizer.Tokenizer(), TreebankWordTokenizer()
    return {
        "kd (blingfire sentences, corpus-style tokens)":
            lambda text: [(t.start, t.end) for sentence in split_sentences(text) for t in sentence],
        "syntok tokens": lambda text: [(t.offset, t.offset + len(t.value)) for t in syntok_tokenizer.tokenize(text)],
        "blingfire text_to_words": lambda text: spans_in_order(text, blingfire.text_to_words(text).split()),
        "nltk Treebank": lambda text: list(treebank.span_tokenize(text)),
    }


def splitters() -> dict[str, Callable[[str], list[int]]]:
    """Each splitter's sentence end offsets (trailing spaces stripped)."""
    import blingfire
    import pysbd
    import syntok.segmenter

    segmenter = pysbd.Segmenter(language="en", clean=False, char_span=True)

    def syntok_ends(text: str) -> list[int]:
        return [s[-1].offset + len(s[-1].value) for p in syntok.segmenter.analyze(text) for s in p if s]

    def stripped(text: str, ends: list[int]) -> list[int]:
        return [len(text[:end].rstrip()) for end in ends]

    return {
        "syntok": syntok_ends,
        "pysbd": lambda text: stripped(text, [span.end for span in segmenter.segment(text)]),
        "blingfire": lambda text: stripped(text, [end for _, end in blingfire.text_to_sentences_and_offsets(text)[1]]),
        "regex [.!?] + space + capital": lambda text: [m.end() for m in re.finditer(r"[.!?](?=\s+[A-Z(])", text)]
                                                      + [len(text)],
    }


def f1(found: int, expected: int, matched: int) -> float:
    return 2 * matched / (found + expected) if found + expected else 1.0


def token_agreement(sentences: list[tuple[str, ...]], tokenise: Callable) -> dict[str, float]:
    found = expected = matched = exact = 0
    for tokens in sentences:
        text, gold = detokenise(tokens)
        predicted = set(tokenise(text))
        hits = len(predicted & set(gold))
        found, expected, matched = found + len(predicted), expected + len(gold), matched + hits
        exact += hits == len(gold) == len(predicted)
    return {"token_f1": 100 * f1(found, expected, matched), "sentences_exact": 100 * exact / len(sentences)}


def boundary_agreement(sentences: list[tuple[str, ...]], split: Callable) -> float:
    found = expected = matched = 0
    for first in range(0, len(sentences) - WINDOW + 1, WINDOW):
        text, gold = "", []
        for tokens in sentences[first:first + WINDOW]:
            text += (" " if text else "") + detokenise(tokens)[0]
            gold.append(len(text))
        ends = set(split(text))
        found, expected, matched = found + len(ends), expected + len(gold), matched + len(ends & set(gold))
    return 100 * f1(found, expected, matched)


def agreement(data_dir: Path, corpora: list[str], log: Callable[[str], None]) -> dict[str, dict]:
    """corpus -> candidate -> figures, over every sentence of train, devel and test."""
    results: dict[str, dict] = {}
    candidates, splitter_candidates = tokenisers(), splitters()
    for corpus in corpora:
        sentences = [s.tokens for split in ("train", "devel", "test")
                     for s in read_conll(data_dir / corpus / f"{split}.tsv")]
        row: dict[str, dict] = {"sentences": len(sentences)}
        for name, tokenise in candidates.items():
            started = time.perf_counter()
            row[name] = {**token_agreement(sentences, tokenise), "seconds": time.perf_counter() - started}
        for name, split in splitter_candidates.items():
            started = time.perf_counter()
            row[f"split: {name}"] = {"boundary_f1": boundary_agreement(sentences, split),
                                     "seconds": time.perf_counter() - started}
        results[corpus] = row
        log(f"{corpus}: " + ", ".join(f"{name} {next(iter(v.values())):.2f}" for name, v in row.items()
                                      if isinstance(v, dict)))
    return results
