"""The search spaces and plans kd ships, found from any folder: a path as given (or relative to where
kd was started, before `-C`), else the file of that name in kd's package data (`kd/search_spaces`,
`kd/experiments`: links to the checkout's folders, copied into a built package). Not found, the
error lists every place it looked and what kd ships."""
from __future__ import annotations

from importlib import resources
from pathlib import Path

from kd.cli.options import started_in
from kd.errors import KdError

SEARCH_SPACES, PLANS = "search_spaces", "experiments"


def shipped_folder(kind: str) -> Path:
    return Path(str(resources.files("kd") / kind))


def find_shipped(value: str, kind: str, option: str) -> Path:
    """The file `value` names for `option` (`--space`, `PLAN`); `kind` is the package folder of the
    shipped ones. A shipped file is returned resolved, so that paths inside it (a plan's data_dir)
    are taken relative to the checkout's folder it links to."""
    given = Path(value)
    places = [given] if given.is_absolute() else [Path.cwd() / given, started_in() / given]
    folder = shipped_folder(kind)
    names = [given.name] if given.suffix else [given.name, f"{given.name}.yaml"]
    shipped = [folder / name for name in names]
    for place in dict.fromkeys(places):
        if place.is_file():
            return given if place in (given, Path.cwd() / given) else place  # as given: messages name it so
    for place in shipped:
        if place.is_file():
            return place.resolve()
    looked = ", ".join(str(p) for p in dict.fromkeys([*places, *shipped]))
    available = ", ".join(sorted(p.name for p in folder.glob("*.yaml"))) or "none"
    raise KdError(f"{option} {value}: not found; looked in {looked} (kd ships {available})")
