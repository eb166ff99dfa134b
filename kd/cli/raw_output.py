"""`kd predict --raw`: the entities of each line of a text file as JSON lines."""
from __future__ import annotations

import gc
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from kd.errors import disk_full_names
from kd.models.raw_text import TokenTagger, tag_file
from kd.utils.atomic import atomic_file


def write_entities(tagger: TokenTagger, input_path: str, documents: Sequence[tuple[int, str]],
                   out_path: str | None) -> None:
    """One JSON object per document, `{"line": N, "entities": [...]}`, to `out_path` (written
    whole or not at all) or stdout. Non-ASCII text is written as is (UTF-8)."""
    # The libraries and the model loaded so far live until the process ends: frozen, Python's cyclic
    # collector stops rescanning them while tokenising allocates an object per word. On BioNLP13PC's
    # test set (46,196 words) tokenising took 0.08-0.23 s without (a full collection scanned 234,000
    # objects) and 0.08-0.09 s frozen, against 1.5 s of prediction (bench/README.md, "Raw text").
    gc.freeze()
    records = tag_file(tagger, input_path, documents)
    lines = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    if out_path is None:
        sys.stdout.write(lines)
        return
    with disk_full_names(out_path), atomic_file(Path(out_path), "w", encoding="utf-8", newline="\n") as stream:
        stream.write(lines)
