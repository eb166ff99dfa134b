"""`kd data`: list, download and check the biomedical NER corpora; build transfer text."""
from __future__ import annotations

import json
from pathlib import Path

import click

from kd.cli.errors import handle_errors
from kd.cli.options import WHOLE_NUMBER
from kd.data.text import MAX_SENTENCE_TOKENS
from kd.data.corpora import (
    CHECKSUM_FILE,
    REGISTRY,
    corpus_statistics,
    discover_corpora,
    download_corpora,
    find_local_corpus,
    get_corpus,
    resolve_corpus_dir,
    verify_checksums,
)
from kd.errors import KdError

_DATA_DIR = click.Path(file_okay=False, path_type=Path)


@click.group("data")
def data() -> None:
    """List, download and check the biomedical NER corpora; build transfer text."""


@data.command("list")
@click.option("--data-dir", type=_DATA_DIR, envvar="KD_DATA_DIR", help="Folder holding corpora [env: KD_DATA_DIR].")
@handle_errors
def list_corpora(data_dir: Path | None) -> None:
    """Show the known corpora and whether each is present in the data directory."""
    rows = []
    for info in REGISTRY.values():
        local = find_local_corpus(info.name, data_dir)
        rows.append((info.name, info.entity_types, "yes" if local else "no", str(local) if local else "-"))
    _print_table(("NAME", "ENTITY TYPES", "LOCAL", "PATH"), rows)


@data.command("download")
@click.argument("names", nargs=-1)
@click.option("--all", "download_all", is_flag=True, help="Download all known corpora.")
@click.option(
    "--dest",
    "--data-dir",
    "dest",
    type=_DATA_DIR,
    envvar="KD_DATA_DIR",
    required=True,
    help="Folder to download into; each corpus goes to DEST/<name> [env: KD_DATA_DIR].",
)
@handle_errors
def download(names: tuple[str, ...], download_all: bool, dest: Path) -> None:
    """Download corpora from the pinned upstream commit and verify they parse."""
    if download_all == bool(names):
        raise click.UsageError("give corpus NAMEs or --all, not both and not neither")
    # Check every name before fetching anything, so a typo does not waste a long download.
    selected = list(REGISTRY) if download_all else [get_corpus(name).name for name in names]
    for name in selected:
        click.echo(f"downloading {name} ...", err=True)
        (path,) = download_corpora([name], dest)
        click.echo(f"{name}\t{path}")


@data.command("check")
@click.argument("corpus")
@click.option("--data-dir", type=_DATA_DIR, envvar="KD_DATA_DIR", help="Folder holding corpora [env: KD_DATA_DIR].")
@click.option("--json", "as_json", is_flag=True, help="Print the statistics as JSON.")
@handle_errors
def check(corpus: str, data_dir: Path | None, as_json: bool) -> None:
    """Parse every split of CORPUS (a name or a folder) and report its size and entity types."""
    corpus_dir = resolve_corpus_dir(corpus, data_dir)
    stats = corpus_statistics(corpus_dir)
    sums = corpus_dir / CHECKSUM_FILE
    if sums.is_file():
        problems = verify_checksums(sums)
        if problems:
            raise KdError(f"{sums}: {'; '.join(problems)}")
        stats["checksums"] = "ok"
    else:
        stats["checksums"] = "absent"
    if as_json:
        click.echo(json.dumps(stats, indent=2))
        return
    click.echo(f"corpus: {corpus_dir}  (checksums: {stats['checksums']})")
    rows = [
        (
            split,
            str(info["sentences"]),
            str(info["tokens"]),
            str(sum(info["entities"].values())),
            ", ".join(f"{kind}={count}" for kind, count in info["entities"].items()) or "-",
        )
        for split, info in stats["splits"].items()
    ]
    _print_table(("SPLIT", "SENTENCES", "TOKENS", "ENTITIES", "BY TYPE"), rows)


@data.command("text")
@click.argument("files", nargs=-1, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--input", "inputs", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="A text FILE given as an option (repeatable), for `mlflow run -P input=FILE`.")
@click.option("--from-corpora", default=None,
              help="Also take these corpora's training sentences: comma-separated names or folders, or `all`.")
@click.option("--for", "for_corpora", default="all", show_default=True,
              help="Remove every sentence of these corpora's devel and test splits: names or folders, or `all` "
                   "(every corpus under --data-dir; none when there is no data folder).")
@click.option("--max-sentences", type=WHOLE_NUMBER, default=None, help="Keep a seeded random sample of this many.")
@click.option("--max-tokens", type=WHOLE_NUMBER, default=MAX_SENTENCE_TOKENS, show_default=True,
              help="Cut longer sentences into pieces of at most this many tokens.")
@click.option("--seed", type=WHOLE_NUMBER, default=1, show_default=True, help="Seed of the --max-sentences sample.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The text file to write (one tokenised sentence per line); OUT.manifest.json goes beside it.")
@click.option("--data-dir", type=_DATA_DIR, envvar="KD_DATA_DIR", help="Folder holding corpora [env: KD_DATA_DIR].")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as one line of JSON.")
@click.option("--threads", type=WHOLE_NUMBER, default=0, show_default=True,
              help="Taken like every entry point's --threads; building text runs on one thread.")
@handle_errors
def text(files: tuple[Path, ...], inputs: tuple[Path, ...], from_corpora: str | None, for_corpora: str, max_sentences: int | None,
         max_tokens: int, seed: int, out: Path, data_dir: Path | None, as_json: bool, threads: int) -> None:
    """Build transfer text for students (kd distill --unlabelled) from raw text FILEs (plain text,
    MEDLINE/PubMed XML, PubTator, BioC XML or JSON, JSONL with a `text` field; gzip'd or not) and
    other corpora's training splits: sentence-split and tokenised like the corpora, deduplicated,
    without any sentence of the --for corpora's devel and test splits."""
    from kd.data.text.build import TextJob, build_text

    files = (*files, *inputs)
    if not files and not from_corpora:
        raise click.UsageError("give text FILEs, --from-corpora, or both")
    no_data_folder = for_corpora.strip() == "all" and (data_dir is None or not data_dir.is_dir())
    job = TextJob(files=files, from_corpora=_corpus_dirs(from_corpora, data_dir) if from_corpora else [],
                  for_corpora=[] if no_data_folder else _corpus_dirs(for_corpora, data_dir), out=out,
                  max_sentences=max_sentences, seed=seed, max_tokens=max_tokens)
    manifest = build_text(job)
    if as_json:
        click.echo(json.dumps(manifest))  # one line, like every command's --json
        return
    removed = ", ".join(f"{count} {why}" for why, count in manifest["removed"].items()) or "none"
    click.echo(f"{out}: {manifest['sentences']} sentences, {manifest['tokens']} tokens (read {manifest['read']}; "
               f"removed: {removed}; long sentences cut: {manifest['long_sentences_cut']['count']})")
    if no_data_folder:
        click.echo("warning: no data folder: no evaluation split was checked (--data-dir or --for)", err=True)


def _corpus_dirs(names: str, data_dir: Path | None) -> list[Path]:
    if names.strip() == "all":
        return discover_corpora(data_dir)
    return [resolve_corpus_dir(name.strip(), data_dir) for name in names.split(",") if name.strip()]


def _print_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
