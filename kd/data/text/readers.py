"""Raw text in the formats biomedical text comes in, as (record, text) pairs: plain text (a record
per line), MEDLINE / PubMed XML (title and abstract), PubTator, BioC XML and JSON, JSONL with a `text`
field; and CoNLL (already tokenised: a record per sentence, its tokens joined by spaces); any of them
gzip'd (`.gz`). The format is told by the file name, else by the first bytes. A malformed record
raises a DataError naming the file and the record (its line where the format has lines)."""
from __future__ import annotations

import gzip
import io
import json
import re
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from pathlib import Path

from kd.data.conll import decode_utf8, read_file_bytes, sentences_of_lines
from kd.errors import DataError

FORMATS = ("text", "medline", "pubtator", "bioc-xml", "bioc-json", "jsonl", "conll")
TOKENISED = ("conll",)  # formats whose records are tokenised sentences already
# PMID|t|title and PMID|a|abstract lines; annotation lines (PMID<tab>start<tab>end...) follow them.
_PUBTATOR_TEXT = re.compile(r"^(\S+)\|([ta])\|(.*)$")


def read_text_file(path: Path) -> bytes:
    """The file's bytes, gunzipped when they are gzip's."""
    data = read_file_bytes(path)
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as error:
            raise DataError(path, f"not a readable gzip file ({error})") from None
    return data


def detect_format(path: Path, data: bytes) -> str:
    name = path.name.lower().removesuffix(".gz")
    head = data.lstrip()[:2000]
    if name.endswith(".jsonl"):
        return "jsonl"
    if name.endswith(".json") or head[:1] == b"{" and b"\n{" not in head:
        return "bioc-json"
    if head[:1] == b"{":
        return "jsonl"
    if name.endswith(".xml") or head[:1] == b"<":
        return "bioc-xml" if re.search(rb"<collection[\s>]", head) else "medline"
    first = head.split(b"\n", 1)[0].decode("utf-8", "replace")
    if name.endswith(".pubtator") or _PUBTATOR_TEXT.match(first):
        return "pubtator"
    if "\t" in first:
        return "conll"
    return "text"


def read_records(path: str | Path) -> tuple[str, Iterator[tuple[str, str]]]:
    """The file's format and its (record, text) pairs."""
    path = Path(path)
    data = read_text_file(path)
    kind = detect_format(path, data)
    if kind in ("medline", "bioc-xml"):
        return kind, _xml_records(path, data, kind)
    text = decode_utf8(path, data)
    readers = {"text": _plain_records, "pubtator": _pubtator_records, "jsonl": _jsonl_records,
               "bioc-json": _bioc_json_records, "conll": _conll_records}
    return kind, readers[kind](path, text)


def _plain_records(path: Path, text: str) -> Iterator[tuple[str, str]]:
    """Every non-blank line is a record: a sentence never spans lines, so a file of one (tokenised)
    sentence per line keeps its sentences, even those without a full stop. Hard-wrapped text needs its
    paragraphs joined into lines first."""
    for number, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            yield f"line {number}", line


def _conll_records(path: Path, text: str) -> Iterator[tuple[str, str]]:
    """A CoNLL file's sentences (labels ignored), as `kd predict` reads them."""
    for index, tokens in enumerate(sentences_of_lines(path, text.split("\n")), start=1):
        yield f"sentence {index}", " ".join(tokens)


def _pubtator_records(path: Path, text: str) -> Iterator[tuple[str, str]]:
    parts: list[str] = []
    document = None
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            if parts:
                yield f"document {document}", " ".join(parts)
            parts, document = [], None
            continue
        match = _PUBTATOR_TEXT.match(line)
        if match:
            if document is not None and match.group(1) != document:
                raise DataError(path, f"document {match.group(1)} starts without a blank line after {document}",
                                number)
            document = match.group(1)
            parts.append(match.group(3))
        elif document is None or len(line.split("\t")) < 4:
            raise DataError(path, "expected PMID|t|title, PMID|a|abstract or a tab-separated annotation", number)
    if parts:
        yield f"document {document}", " ".join(parts)


def _jsonl_records(path: Path, text: str) -> Iterator[tuple[str, str]]:
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(path, f"not valid JSON ({error.msg})", number) from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise DataError(path, "expected an object with a string field `text`", number)
        yield f"line {number}", record["text"]


def _bioc_json_records(path: Path, text: str) -> Iterator[tuple[str, str]]:
    try:
        collection = json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(path, f"not valid JSON ({error.msg})", error.lineno) from None
    documents = collection.get("documents") if isinstance(collection, dict) else None
    if not isinstance(documents, list):
        raise DataError(path, "expected a BioC collection: an object with a list `documents`")
    for index, document in enumerate(documents, start=1):
        name = f"document {document.get('id', index) if isinstance(document, dict) else index}"
        passages = document.get("passages") if isinstance(document, dict) else None
        if not isinstance(passages, list) or not all(isinstance(p, dict) and isinstance(p.get("text", ""), str)
                                                     for p in passages):
            raise DataError(path, f"{name} (#{index}): expected `passages`, a list of objects with a string `text`")
        yield name, " ".join(p["text"] for p in passages if p.get("text"))


def _xml_records(path: Path, data: bytes, kind: str) -> Iterator[tuple[str, str]]:
    """Streams the records (MEDLINE dumps are large): each MedlineCitation (in a PubmedArticle or,
    in older dumps, at the top) or BioC document is read, turned into text and dropped."""
    record_tag = "document" if kind == "bioc-xml" else "MedlineCitation"
    try:
        for _, element in ElementTree.iterparse(io.BytesIO(data), events=("end",)):
            if element.tag == record_tag:
                yield _xml_record(element, kind)
            if element.tag in (record_tag, "PubmedArticle"):
                element.clear()
    except ElementTree.ParseError as error:
        line, column = error.position
        raise DataError(path, f"not well-formed XML (column {column})", line) from None


def _xml_record(element: ElementTree.Element, kind: str) -> tuple[str, str]:
    def text_of(node: ElementTree.Element | None) -> str:
        return " ".join("".join(node.itertext()).split()) if node is not None else ""

    if kind == "bioc-xml":
        name = f"document {text_of(element.find('id'))}"
        return name, " ".join(text_of(p.find("text")) for p in element.iter("passage") if p.find("text") is not None)
    name = f"PMID {text_of(element.find('.//PMID'))}"
    title = text_of(element.find(".//ArticleTitle"))
    abstract = [text_of(node) for node in element.iter("AbstractText")]
    return name, " ".join(part for part in [title, *abstract] if part)
