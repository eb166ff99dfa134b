"""A saved BiLSTM tagger as an ONNX graph, for ONNX Runtime: one task's emission scores from the
padded index arrays of a batch (kd.data.batching.Batch); Viterbi (CRF) or argmax (softmax) runs
in numpy after the graph (kd.models.onnx_runtime), with the CRF's scores kept in the file.

The file also keeps the model's description (architecture, vocabularies, tag names) and a
fingerprint of its weights as metadata, so that it tags on its own and can be checked against the
run it came from. onnx is imported only here and only when a graph is written.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from kd.errors import FieldError, KdError
from kd.models.bilstm import BiLSTM
from kd.models.io import FORMAT_VERSION, SavedModel
from kd.models.tagger import Tagger
from kd.utils.atomic import atomic_path

# The graph's inputs, as Batch fields, and its output.
INPUT_NAMES = ("words", "form_index", "form_chars", "form_lengths", "lengths")
OUTPUT_NAME = "logits"
# Metadata keys of the ONNX file.
METADATA_DESCRIPTION = "kd.tagger"  # tagger.json's content: format version, config, vocabularies
METADATA_TASK = "kd.task"
METADATA_FINGERPRINT = "kd.fingerprint"
METADATA_CRF = "kd.crf"  # {"transitions", "start", "end"} of the task's CRF, absent for softmax
# Opset 17 has every operator the graph needs and runs on ONNX Runtime 1.14 and later.
OPSET = 17


def model_fingerprint(saved: SavedModel) -> str:
    """sha256 of a loaded model's description and weights (names, shapes, dtypes, values): the same
    for the same model whatever file format held it."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"config": saved.model.config.to_json(), "vocabularies": saved.vocabularies.to_json()},
                             sort_keys=True, ensure_ascii=False).encode())
    for name, tensor in sorted(saved.model.state_dict().items()):
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(value.shape)}:{value.dtype}".encode())
        digest.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


def _reversal(lengths: torch.Tensor, width: torch.Tensor | int) -> torch.Tensor:
    """kd.models.bilstm.reversal_index with the width taken from a traced shape."""
    positions = torch.arange(width, device=lengths.device).unsqueeze(0)
    lengths = lengths.unsqueeze(1)
    return torch.where(positions < lengths, lengths - 1 - positions, positions)


def _reverse(x: torch.Tensor, reverse: torch.Tensor) -> torch.Tensor:
    """kd.models.bilstm.reverse_padded as one element gather, which ONNX has (GatherElements);
    the row permutation used in training is a custom autograd function the exporter cannot see into."""
    return x.gather(1, reverse.unsqueeze(2).expand(-1, -1, x.shape[2]))


def _bilstm(lstm: BiLSTM, x: torch.Tensor, reverse: torch.Tensor) -> torch.Tensor:
    forward_states, _ = lstm.forward_lstm(x)
    backward_states, _ = lstm.backward_lstm(_reverse(x, reverse))
    return torch.cat([forward_states, _reverse(backward_states, reverse)], dim=2)


class TaggerGraph(nn.Module):
    """The forward pass of one task of a Tagger in eval mode (no dropout), written with operators
    ONNX has: the same modules and weights as Tagger.forward, with the characters of every form of
    the batch encoded in one call (Tagger.encode_forms groups them by length, a data-dependent loop)."""

    def __init__(self, tagger: Tagger, task: str) -> None:
        super().__init__()
        self.tagger = tagger
        self.head_module = tagger.head(task)

    def forward(self, words: torch.Tensor, form_index: torch.Tensor, form_chars: torch.Tensor,
                form_lengths: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        tagger = self.tagger
        char_reverse = _reversal(form_lengths, form_chars.shape[1])
        chars = tagger.char_embedding(form_chars)
        forward_states, _ = tagger.char_lstm.forward_lstm(chars)
        backward_states, _ = tagger.char_lstm.backward_lstm(_reverse(chars, char_reverse))
        last = (form_lengths - 1).view(-1, 1, 1).expand(-1, 1, forward_states.shape[2])
        form_vectors = torch.cat([forward_states.gather(1, last).squeeze(1),
                                  backward_states.gather(1, last).squeeze(1)], dim=1)
        embedded = torch.cat([tagger.word_embedding(words), F.embedding(form_index, form_vectors)], dim=2)
        reverse = _reversal(lengths, words.shape[1])
        shared = _bilstm(tagger.shared_lstm, embedded, reverse)
        states = _bilstm(self.head_module.lstm, shared, reverse)
        return self.head_module.output(torch.relu(self.head_module.hidden(states)))


def _example_inputs(saved: SavedModel, task: str) -> tuple[torch.Tensor, ...]:
    from kd.data.batching import EncodedDataset
    from kd.models.predict import as_sentences

    sentences = as_sentences([["Aspirin", "induced", "asthma", "."], ["in", "two", "patients"]])
    batch = EncodedDataset(sentences, saved.vocabularies, task, with_tags=False).batch([0, 1])
    return tuple(getattr(batch, name) for name in INPUT_NAMES)


def export_onnx(saved: SavedModel, task: str | None, path: str | Path) -> Path:
    """Writes one task of a loaded tagger as an ONNX file (atomically) and returns its path.
    `task` may be None for a single-task model."""
    tasks = saved.model.task_names
    if task is None and len(tasks) > 1:
        raise FieldError("task", None, f"the model tags several corpora ({', '.join(tasks)}): choose one")
    task = task or tasks[0]
    if task not in tasks:
        raise FieldError("task", task, f"the model has no such task; it has {', '.join(tasks)}")
    require("onnx")  # before any work
    graph = TaggerGraph(saved.model.cpu().eval(), task).eval()
    path = Path(path)
    with atomic_path(path) as staging:
        _write_graph(graph, _example_inputs(saved, task), staging)
        _add_metadata(staging, saved, task)
    return path


def _write_graph(graph: TaggerGraph, inputs: tuple[torch.Tensor, ...], target: Path) -> None:
    import warnings

    dynamic = {"words": {0: "sentences", 1: "width"}, "form_index": {0: "sentences", 1: "width"},
               "form_chars": {0: "forms", 1: "characters"}, "form_lengths": {0: "forms"},
               "lengths": {0: "sentences"}, OUTPUT_NAME: {0: "sentences", 1: "width"}}
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter warns that it is deprecated and that LSTMs have a fixed batch
        # size when exported with batch_first; the axes declared dynamic here are honoured.
        warnings.simplefilter("ignore")
        torch.onnx.export(graph, inputs, str(target), input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME],
                          dynamic_axes=dynamic, opset_version=OPSET, dynamo=False)


def require(module: str):
    """An optional ONNX module, imported; a one-line error naming the extra where it is missing."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise KdError(f"ONNX export and the onnx runtime need {module}: pip install 'kd[onnx]'") from None


def _add_metadata(target: Path, saved: SavedModel, task: str) -> None:
    onnx = require("onnx")
    model = onnx.load(str(target))
    description = {"format_version": FORMAT_VERSION, "config": saved.model.config.to_json(),
                   "vocabularies": saved.vocabularies.to_json()}
    entries = {METADATA_DESCRIPTION: json.dumps(description, ensure_ascii=False), METADATA_TASK: task,
               METADATA_FINGERPRINT: model_fingerprint(saved)}
    crf = saved.model.crf(task)
    if crf is not None:
        entries[METADATA_CRF] = json.dumps({name: getattr(crf, name).detach().float().tolist()
                                            for name in ("transitions", "start", "end")})
    for key, value in entries.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(target))
