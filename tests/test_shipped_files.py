"""Search spaces and plans shipped with kd are found from any folder, and a missing one says where
kd looked (issue 26)."""
from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

from kd.cli.main import cli
from tests.conftest import REPO


def test_a_shipped_plan_is_found_from_another_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    nowhere = ["--data-dir", str(tmp_path / "nowhere")]
    shown = CliRunner().invoke(cli, ["plan", "show", "experiments/information2023-cpu.yaml", *nowhere])
    assert shown.exit_code == 0 and shown.output.startswith("plan information2023-cpu: "), shown.output
    # Found (the error is about its corpora, not the plan file), and named by its shipped path.
    status = CliRunner().invoke(cli, ["plan", "status", "experiments/information2023-cpu.yaml", *nowhere])
    assert status.exit_code == 2 and "no such corpus" in status.output, status.output
    assert str(REPO / "experiments" / "information2023-cpu.yaml") in status.output


def test_a_missing_space_names_every_place_looked_in(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["tune", "--task", "x", "--cache", "y", "--space", "search_spaces/nope.yaml"])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert f"{tmp_path}/search_spaces/nope.yaml" in result.output
    assert "kd/search_spaces/nope.yaml" in result.output and "kd ships intermediate.yaml, kl.yaml" in result.output


@pytest.mark.slow  # builds a wheel: about 10 s
def test_shipped_files_are_package_data_of_a_built_wheel(tmp_path):
    """What an installed kd finds: the wheel holds every shipped space and plan (kd/search_spaces and
    kd/experiments link to the checkout's folders)."""
    import shutil
    import zipfile

    source = tmp_path / "source"  # a copy: building in place would leave build/ in the checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for name in ("kd", "search_spaces", "experiments"):
        shutil.copytree(REPO / name, source / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(source),
                    "-w", str(tmp_path)], check=True, cwd=tmp_path, timeout=600)
    names = set(zipfile.ZipFile(next(tmp_path.glob("kd-*.whl"))).namelist())
    for folder in ("search_spaces", "experiments"):
        for path in (REPO / folder).glob("*.yaml"):
            assert f"kd/{folder}/{path.name}" in names
