"""`kd data text`: transfer text from raw text in every supported format and from corpora, tokenised
like the corpora, deduplicated, without evaluation sentences; with its manifest."""
from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from kd.cli.main import cli
from kd.data.conll import read_conll
from kd.data.text.build import TextJob, build_text
from kd.data.text.readers import read_records
from kd.data.text.tokenise import split_sentences, tokenise
from tests.conftest import make_corpora, mlflow_run, one_line_error

TITLE = "Germline mutations in BRCA1 cause breast cancer."
ABSTRACT = "IL-2 and 5-fluorouracil were given at 0.5 mg/kg. The tumour-suppressor APC (adenomatous polyposis coli) failed."
# By hand, the way the CoNLL corpora split them.
EXPECTED = [
    "Germline mutations in BRCA1 cause breast cancer .",
    "IL - 2 and 5 - fluorouracil were given at 0 . 5 mg / kg .",
    "The tumour - suppressor APC ( adenomatous polyposis coli ) failed .",
]


def test_tokens_are_the_corpora_style_and_carry_their_offsets():
    text = f"{TITLE}  {ABSTRACT}"
    sentences = split_sentences(text)
    assert [" ".join(t.text for t in s) for s in sentences] == EXPECTED
    assert all(text[t.start:t.end] == t.text for s in sentences for t in s)
    assert [(t.text, t.start, t.end) for t in tokenise("a-β 3beta", offset=10)] == [
        ("a", 10, 11), ("-", 11, 12), ("β", 12, 13), ("3beta", 14, 19)]
    assert split_sentences("  \n ") == []


def medline(path: Path) -> None:
    path.write_text(f"""<?xml version="1.0"?>
<PubmedArticleSet><PubmedArticle><MedlineCitation><PMID>1</PMID><Article>
<ArticleTitle>{TITLE}</ArticleTitle><Abstract><AbstractText Label="A">IL-2 and 5-fluorouracil were given
at 0.5 mg/kg.</AbstractText><AbstractText>The <i>tumour-suppressor</i> APC (adenomatous polyposis coli) failed.</AbstractText>
</Abstract></Article></MedlineCitation><PubmedData/></PubmedArticle></PubmedArticleSet>
""")


def formats(root: Path) -> dict[str, Path]:
    files = {"text": root / "a.txt", "medline": root / "b.xml", "pubtator": root / "c.pubtator",
             "bioc-xml": root / "d.bioc.xml", "bioc-json": root / "e.json", "jsonl": root / "f.jsonl"}
    files["text"].write_text(f"{TITLE} {ABSTRACT}\n")
    medline(files["medline"])
    files["pubtator"].write_text(f"1|t|{TITLE}\n1|a|{ABSTRACT}\n1\t0\t8\tGermline\tDisease\tD1\n\n")
    files["bioc-xml"].write_text(f"<?xml version='1.0'?><collection><source>x</source><document><id>1</id>"
                                 f"<passage><offset>0</offset><text>{TITLE}</text></passage>"
                                 f"<passage><offset>50</offset><text>{ABSTRACT}</text></passage></document></collection>")
    files["bioc-json"].write_text(json.dumps({"source": "x", "documents": [
        {"id": "1", "passages": [{"offset": 0, "text": TITLE}, {"offset": 50, "text": ABSTRACT}]}]}))
    files["jsonl"].write_text(json.dumps({"text": f"{TITLE} {ABSTRACT}"}) + "\n")
    return files


@pytest.mark.parametrize("zipped", [False, True])
def test_every_format_gives_the_same_sentences(tmp_path: Path, zipped: bool):
    for kind, path in formats(tmp_path).items():
        if zipped:
            path.with_name(path.name + ".gz").write_bytes(gzip.compress(path.read_bytes()))
            path.unlink()
            path = path.with_name(path.name + ".gz")
        detected, records = read_records(path)
        assert detected == kind, path
        out = tmp_path / f"{path.name}.out"
        manifest = build_text(TextJob(files=[path], out=out))
        assert out.read_text().splitlines() == EXPECTED, kind
        assert manifest["sources"][0]["format"] == kind and manifest["sources"][0]["records"] == 1


@pytest.mark.parametrize("name, content, where", [
    ("bad.jsonl", '{"text": "fine."}\n{"text": "cut\n', "bad.jsonl:2: not valid JSON"),
    ("bad.jsonl", '{"text": "fine."}\n{"title": "no text"}\n', "bad.jsonl:2: expected an object with a string field"),
    ("bad.xml", "<PubmedArticleSet><PubmedArticle>\n<MedlineCitation></PubmedArticle>", "bad.xml:2: not well-formed XML"),
    ("bad.pubtator", "1|t|Title.\n1|a|Text.\nno bars here\n", "bad.pubtator:3: expected PMID|t|title"),
    ("bad.json", '{"documents": [{"id": "7", "passages": "oops"}]}', "bad.json: document 7 (#1): expected `passages`"),
    ("bad.txt", b"ok\n\xff\n", "bad.txt:2: not valid UTF-8"),
])
def test_a_malformed_record_is_one_line_naming_file_and_record(tmp_path: Path, name, content, where):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    for given in (path, gzip_copy(path)):
        out = tmp_path / "out.txt"
        result = CliRunner().invoke(cli, ["data", "text", str(given), "--out", str(out), "--for", str(tmp_path)])
        message = one_line_error(result)
        assert where.replace(name, given.name) in message.replace(str(tmp_path) + "/", "")
        assert not out.exists() and not Path(f"{out}.manifest.json").exists()


def gzip_copy(path: Path) -> Path:
    zipped = path.with_name(path.name + ".gz")
    zipped.write_bytes(gzip.compress(path.read_bytes()))
    return zipped


def test_lines_never_join_and_a_conll_file_keeps_its_sentences(tmp_path: Path):
    lines = tmp_path / "lines.txt"
    lines.write_text("no full stop here\nnor here\n\nTwo sentences. In one line.\n")
    out = tmp_path / "out.txt"
    build_text(TextJob(files=[lines], out=out))
    assert out.read_text().splitlines() == ["no full stop here", "nor here", "Two sentences .", "In one line ."]
    conll = tmp_path / "c.tsv"
    conll.write_text("Dr.\tO\nNo\tO\n.\tO\nsplit\tB-X\n\n+/-\tO\n")
    manifest = build_text(TextJob(files=[conll], out=out))
    assert out.read_text().splitlines() == ["Dr. No . split", "+/-"] and manifest["sources"][0]["format"] == "conll"


def test_duplicates_and_evaluation_sentences_are_removed_and_counted(tmp_path: Path):
    data_dir = make_corpora(tmp_path / "corpora")
    test = read_conll(data_dir / "tiny" / "test.tsv")
    devel = read_conll(data_dir / "other" / "devel.tsv")
    # A test sentence retyped (case and spacing changed) is still found; one of another corpus's devel too.
    retyped = " ".join(test[0].tokens).upper().replace(" ", "", 3)
    raw = tmp_path / "raw.txt"
    raw.write_text(f"Brand new text here.\nBrand new text here.\n\n{retyped}\n{' '.join(devel[0].tokens)}\n"
                   "Something else entirely.\n")
    out = tmp_path / "out.txt"
    manifest = build_text(TextJob(files=[raw], for_corpora=[data_dir / "tiny", data_dir / "other"], out=out))
    assert out.read_text().splitlines() == ["Brand new text here .", "Something else entirely ."]
    assert manifest["removed"] == {"duplicate": 1, "in tiny/test": 1, "in other/devel": 1}
    assert manifest["read"] == 5 and manifest["sentences"] == 2
    assert manifest["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert manifest["sources"][0]["sha256"] == hashlib.sha256(raw.read_bytes()).hexdigest()
    assert json.loads(Path(f"{out}.manifest.json").read_text()) == manifest


def test_from_corpora_sampling_and_long_sentences(tmp_path: Path):
    data_dir = make_corpora(tmp_path / "corpora")
    long = tmp_path / "long.txt"
    long.write_text(" ".join(f"w{i}" for i in range(60)) + "\n")  # the corpus's sentences have at most 24
    out = tmp_path / "out.txt"

    def build(seed: int, max_sentences: int | None) -> tuple[list[str], dict]:
        manifest = build_text(TextJob(files=[long], from_corpora=[data_dir / "other"], for_corpora=[data_dir / "tiny"],
                                      out=out, max_sentences=max_sentences, seed=seed, max_tokens=25))
        return out.read_text().splitlines(), manifest

    everything, manifest = build(1, None)
    assert everything[:3] == [" ".join(f"w{i}" for i in range(a, min(a + 25, 60))) for a in (0, 25, 50)]
    assert manifest["long_sentences_cut"] == {"count": 1, "max_tokens": 25}
    train = {" ".join(s.tokens) for s in read_conll(data_dir / "other" / "train.tsv")}
    assert set(everything[3:]) <= train
    assert manifest["sources"][1] == {"corpus": "other", "split": "train", "sentences": 200}
    sample, manifest = build(1, 20)
    assert len(sample) == 20 and set(sample) <= set(everything)
    assert [line for line in everything if line in sample] == sample  # the file's order is kept
    assert manifest["sampled"] == {"from": len(everything), "to": 20, "seed": 1}
    assert build(1, 20)[0] == sample and build(2, 20)[0] != sample


def test_the_command_writes_the_text_and_says_what_it_removed(tmp_path: Path):
    data_dir = make_corpora(tmp_path / "corpora")
    raw = tmp_path / "raw.txt"
    raw.write_text(f"{TITLE}\n\n{TITLE}\n")
    out = tmp_path / "out.txt"
    result = CliRunner().invoke(cli, ["data", "text", str(raw), "--from-corpora", "other", "--data-dir", str(data_dir),
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    other = [" ".join(s.tokens) for s in read_conll(data_dir / "other" / "train.tsv")]
    evaluation = {" ".join(s.tokens) for corpus in ("tiny", "other") for split in ("devel", "test")
                  for s in read_conll(data_dir / corpus / f"{split}.tsv")}
    kept = [s for s in dict.fromkeys(other) if s not in evaluation]  # the corpora are lower case already
    assert f"{len(kept) + 1} sentences" in result.output
    assert f"{1 + len(other) - len(set(other))} duplicate" in result.output
    assert out.read_text().splitlines()[0] == EXPECTED[0]
    assert json.loads(Path(f"{out}.manifest.json").read_text())["evaluation_splits_of"] == ["other", "tiny"]
    assert CliRunner().invoke(cli, ["data", "text", "--out", str(out)]).exit_code == 2  # nothing to read


@pytest.mark.slow
def test_the_entry_point_builds_text_from_a_users_folder(tmp_path: Path):
    user = tmp_path / "work"
    user.mkdir()
    data_dir = make_corpora(tmp_path / "corpora")
    (user / "abstracts.jsonl").write_text(json.dumps({"text": f"{TITLE} {ABSTRACT}"}) + "\n")
    manifest = mlflow_run("data_text", {"input": "abstracts.jsonl", "out": "transfer.txt", "for_corpora": "tiny",
                                        "threads": "1"}, "kd", user, f"sqlite:///{user / 'mlflow.db'}",
                          env={"KD_DATA_DIR": str(data_dir)})
    assert (user / "transfer.txt").read_text().splitlines() == EXPECTED
    assert manifest["evaluation_splits_of"] == ["tiny"] and manifest["sentences"] == 3
