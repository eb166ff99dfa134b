"""`kd data`: list, download and check the biomedical NER corpora."""
from __future__ import annotations

import json
from pathlib import Path

import click

from kd.cli.one_line_errors import handle_errors
from kd.data.corpora import (
    CHECKSUM_FILE,
    REGISTRY,
    corpus_statistics,
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
    """List, download and check the biomedical NER corpora."""


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


def _print_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
