"""The shape of the code: kd's layers import only downwards (the import-linter contract in
pyproject.toml, run as `lint-imports`), no function over 60 lines and no file over 400."""
from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

MAX_FUNCTION_LINES = 60
MAX_FILE_LINES = 400


def test_layers_point_only_down():
    command = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    if not Path(command).exists():
        pytest.fail("lint-imports is missing: pip install -e '.[test]' (import-linter)")
    result = subprocess.run([command, "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def oversized(root: Path) -> list[str]:
    """`path: N lines` for each file over the limit, `path:line name: N lines` for each function."""
    found = []
    for path in sorted(root.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        relative = path.relative_to(root.parent)
        if len(text.splitlines()) > MAX_FILE_LINES:
            found.append(f"{relative}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text, filename=str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    found.append(f"{relative}:{node.lineno} {node.name}: {lines} lines")
    return found


def test_oversized_finds_long_functions_and_files(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "short.py").write_text("def f():\n    return 1\n")
    (package / "long.py").write_text("def g():\n" + "    x = 1\n" * MAX_FUNCTION_LINES + "\n" * MAX_FILE_LINES)
    assert oversized(package) == [f"pkg/long.py: {MAX_FILE_LINES + MAX_FUNCTION_LINES + 1} lines",
                                  f"pkg/long.py:1 g: {MAX_FUNCTION_LINES + 1} lines"]


def test_no_function_over_60_lines_and_no_file_over_400():
    assert oversized(REPO / "kd") == []
