"""A saved model is a folder: `tagger.json` (architecture and vocabularies) and `weights.pt` (a
state dict). Loading never unpickles code: the weights load with `weights_only=True`."""
from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch

from kd.data.vocab import Vocabularies
from kd.errors import KdError
from kd.models.tagger import Tagger, TaggerConfig
from kd.utils.atomic import atomic_directory

FORMAT_VERSION = 1
CONFIG_FILE = "tagger.json"
WEIGHTS_FILE = "weights.pt"


@dataclass
class SavedModel:
    model: Tagger
    vocabularies: Vocabularies


def save_model(model: Tagger, vocabularies: Vocabularies, directory: str | Path) -> Path:
    with atomic_directory(directory) as staging:
        description = {"format_version": FORMAT_VERSION, "config": model.config.to_json(),
                       "vocabularies": vocabularies.to_json()}
        (staging / CONFIG_FILE).write_text(json.dumps(description, ensure_ascii=False))
        torch.save(model.state_dict(), staging / WEIGHTS_FILE)
    return Path(directory)


def find_model_directory(root: str | Path, shown_as: str | None = None) -> Path:
    """The folder under `root` (itself included) that holds a saved model. `shown_as` names
    `root` in errors (a model fetched into a temporary folder is named by its run)."""
    root = Path(root)
    if (root / CONFIG_FILE).is_file():
        return root
    found = sorted(p.parent for p in root.rglob(CONFIG_FILE))
    if not found:
        raise KdError(f"{shown_as or root}: no saved kd model ({CONFIG_FILE}) found")
    return found[0]


def load_model(directory: str | Path, device: str | torch.device = "cpu", shown_as: str | None = None) -> SavedModel:
    root = Path(directory)
    directory = find_model_directory(root, shown_as)

    def named(name: str) -> str:
        return f"{shown_as}/{(directory / name).relative_to(root)}" if shown_as else str(directory / name)
    try:
        description = json.loads((directory / CONFIG_FILE).read_text())
    except (OSError, ValueError) as error:
        raise KdError(f"{named(CONFIG_FILE)}: cannot read model description: {error}") from None
    if not isinstance(description, dict) or description.get("format_version") != FORMAT_VERSION:
        raise KdError(f"{named(CONFIG_FILE)}: unsupported model format "
                      f"{description.get('format_version') if isinstance(description, dict) else None}")
    try:
        model = Tagger(TaggerConfig.from_json(description["config"]))
        vocabularies = Vocabularies.from_json(description["vocabularies"])
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise KdError(f"{named(CONFIG_FILE)}: invalid model description ({error})") from None
    try:
        state = torch.load(directory / WEIGHTS_FILE, map_location=device, weights_only=True)
        model.load_state_dict(state)
    except (OSError, RuntimeError, pickle.UnpicklingError, EOFError) as error:
        raise KdError(f"{named(WEIGHTS_FILE)}: cannot load weights ({str(error).splitlines()[0]})") from None
    model.to(device).eval()
    return SavedModel(model=model, vocabularies=vocabularies)
