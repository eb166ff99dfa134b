"""Checks on the weight files of a model folder before any library reads them: a transformer's
`--base` folder (a plan's `base:`) or a saved transformer teacher. Safetensors files have their
header checked against the file (a truncated file, or a pickle under a .safetensors name, otherwise
ends in safetensors' own traceback); pickled weights (`pytorch_model.bin`, `*.pt`, ...) are refused,
since unpickling a file from elsewhere can run code. Each refusal is one line naming the file."""
from __future__ import annotations

import json
import struct
from pathlib import Path

from kd.errors import KdError

SAFETENSORS_SUFFIX = ".safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
               "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


def check_safetensors(path: Path, shown_as: str | None = None) -> None:
    """A KdError naming the file unless its header is a JSON table of tensors whose byte ranges lie
    in the file and match their dtype and shape."""
    where = shown_as or str(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(8)
            (length,) = struct.unpack("<Q", head) if len(head) == 8 else (None,)
            if length is None or length > min(size - 8, MAX_HEADER_BYTES):
                raise KdError(f"{where}: not a safetensors file (its header claims {length} bytes of {size})")
            header = json.loads(handle.read(length))
    except OSError as error:
        raise KdError(f"{where}: cannot read ({error.strerror or error})") from None
    except ValueError as error:  # JSON or UTF-8
        raise KdError(f"{where}: not a safetensors file (header: {error})") from None
    data_bytes = size - 8 - length
    if not isinstance(header, dict):
        raise KdError(f"{where}: not a safetensors file (its header is not a table of tensors)")
    for name, entry in header.items():
        if name != "__metadata__" and not _tensor_fits(entry, data_bytes):
            raise KdError(f"{where}: damaged safetensors file (tensor {name!r} does not fit the file of {size} "
                          f"bytes: truncated?)")


def _tensor_fits(entry: object, data_bytes: int) -> bool:
    if not isinstance(entry, dict) or entry.get("dtype") not in DTYPE_BYTES:
        return False
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)
            and isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
        return False
    count = 1
    for dimension in shape:
        count *= dimension
    begin, end = offsets
    return 0 <= begin <= end <= data_bytes and end - begin == count * DTYPE_BYTES[entry["dtype"]]


def check_weights_folder(folder: Path, shown_as: str | None = None) -> None:
    """A model folder's weights are safetensors whose headers hold (every `*.safetensors` in it), and
    there is no pickle that a loader would fall back to."""
    where = shown_as or str(folder)
    tensors = sorted(folder.glob(f"*{SAFETENSORS_SUFFIX}"))
    pickles = sorted(p for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES and p.is_file())
    if pickles and not tensors:
        raise KdError(f"{where}/{pickles[0].name}: pickled weights are not loaded (unpickling can run code); "
                      f"save the model as safetensors (model.save_pretrained(folder, safe_serialization=True))")
    for path in tensors:
        check_safetensors(path, f"{where}/{path.name}")
