"""Names that become paths: a plan's name and its tables' names are folder names under a work or
report folder, and must not lead out of it."""
from __future__ import annotations

from typing import Any

SEPARATORS = ("/", "\\", "\0")  # \\ too: a plan written on Windows means a folder there


def is_path_component(name: Any) -> bool:
    """A name that, joined to a folder, names an entry directly inside it: a non-empty string, not
    `.` or `..`, with no path separator (absolute paths have one)."""
    return isinstance(name, str) and name.strip() not in ("", ".", "..") and not any(s in name for s in SEPARATORS)
