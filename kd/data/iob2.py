"""The entities of an IOB2 tag sequence, as kd's evaluation (kd.training.evaluate) and raw-text
output (kd.models.raw_text) count them: seqeval's strict IOB2 mode, which tests check them against."""
from __future__ import annotations

from collections.abc import Sequence


def iob2_spans(tags: Sequence[str]) -> list[tuple[int, int, str]]:
    """(first token, token after the last, label) of each entity of a strict IOB2 tag sequence."""
    spans: list[tuple[int, int, str]] = []
    start, label = None, None
    for position, tag in enumerate(tags):
        if start is not None and tag == f"I-{label}":
            continue
        if start is not None:
            spans.append((start, position, label))
        start, label = (position, tag[2:]) if tag.startswith("B-") else (None, None)
    if start is not None:
        spans.append((start, len(tags), label))
    return spans
