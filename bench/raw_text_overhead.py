"""The raw-text path's overhead (issue 29): splitting and tokenising documents and turning tags back
into character-offset entities, as a share of prediction time, on a corpus's test split as text.

The test split (default NCBI-disease from ../shared/datasets) is detokenised (tokens joined by a
space, none before `. , ; : ) ] %` or after `( [`) and grouped into documents of --sentences
sentences (abstract-sized). A default-size tagger (initial weights, or --model FOLDER: speed does
not depend on the weights) then, each round, in one process, one torch thread by default:

- tokenise: kd.models.raw_text.split_documents (blingfire sentences, corpus-style tokens, offsets);
- predict: SavedTagger.tag on those token lists (what `kd predict` does with tokens);
- scores: SavedTagger.tag_with_scores (tags and each tag's probability: softmax, or CRF marginals);
- offsets: the entities of the tagged sentences as character spans (sentence_entities);
- raw: kd.models.raw_text.tag_documents end to end (tokenise + scores + offsets).

Medians of --calls rounds after a warm-up round, steps interleaved, wall and CPU time. The objects
made before the rounds (model, libraries, data) are frozen out of Python's cyclic collector, as
`kd predict --raw` does (--no-freeze-gc: not).

    python bench/raw_text_overhead.py [--corpus NCBI-disease] [--output crf] [--model FOLDER]
        [--threads 1] [--calls 5] [--sentences 10] [--no-freeze-gc]
"""
from __future__ import annotations

import gc
import json
import statistics
import time

import torch
from predict_runtimes import student, student_arguments

from kd.models.inference import SavedTagger
from kd.models.raw_text import sentence_entities, split_documents, tag_documents
from kd.training.job_definition import load_task

NO_SPACE_BEFORE = set(".,;:)]%")
NO_SPACE_AFTER = set("([")


def detokenise(tokens: list[str]) -> str:
    text = ""
    for token in tokens:
        if text and token not in NO_SPACE_BEFORE and text[-1] not in NO_SPACE_AFTER:
            text += " "
        text += token
    return text


def timed(step) -> tuple[float, float]:
    """Wall seconds and the process's CPU seconds of one call: on a shared machine the CPU time
    counts only this process's work (one torch thread), where wall time also counts waiting."""
    wall, cpu = time.perf_counter(), time.process_time()
    step()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = student_arguments(__doc__)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--sentences", type=int, default=10, help="Sentences per document.")
    parser.add_argument("--no-freeze-gc", dest="freeze_gc", action="store_false",
                        help="Leave the objects made before the rounds to Python's cyclic collector.")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    data = load_task(args.corpus, args.data_dir, ["train", "test"])
    lines = [detokenise(list(s.tokens)) for s in data.splits["test"]]
    documents = [" ".join(lines[i:i + args.sentences]) for i in range(0, len(lines), args.sentences)]
    saved = student(args, data)
    tagger = SavedTagger(saved, "cpu", saved.model.task_names[0])
    split = split_documents(documents)
    sentences = [sentence for document in split for sentence in document]
    words = [[token.text for token in sentence] for sentence in sentences]
    owners = [document for document, document_sentences in zip(documents, split) for _ in document_sentences]
    tags, scores = tagger.tag_with_scores(words)
    if args.freeze_gc:
        gc.freeze()  # as kd predict --raw does once its model is loaded (kd/cli/raw_output.py)

    steps = {"tokenise": lambda: split_documents(documents), "predict": lambda: tagger.tag(words),
             "scores": lambda: tagger.tag_with_scores(words),
             "offsets": lambda: [sentence_entities(document, tokens, t, s)
                                 for document, tokens, t, s in zip(owners, sentences, tags, scores)],
             "raw": lambda: tag_documents(tagger, documents)}
    seconds = {name: [] for name in steps}
    for round_number in range(args.calls + 1):
        for name, step in steps.items():
            elapsed = timed(step)
            if round_number:
                seconds[name].append(elapsed)
    wall = {name: statistics.median(w for w, _ in times) for name, times in seconds.items()}
    cpu = {name: statistics.median(c for _, c in times) for name, times in seconds.items()}
    entities = sum(len(found) for found in tag_documents(tagger, documents))
    for name in steps:
        print(f"{name:9s} wall {wall[name]:7.3f} s {wall[name] / wall['predict']:6.1%} of predict   "
              f"cpu {cpu[name]:7.3f} s {cpu[name] / cpu['predict']:6.1%}", flush=True)
    print(json.dumps({"corpus": data.name, "documents": len(documents), "sentences": len(sentences),
                      "tokens": sum(map(len, words)), "entities": entities, "output": saved.model.config.output,
                      "threads": args.threads, "calls": args.calls, "freeze_gc": args.freeze_gc,
                      "median_wall_s": wall, "median_cpu_s": cpu,
                      "overhead_share_wall": (wall["tokenise"] + wall["offsets"]) / wall["predict"],
                      "overhead_share_cpu": (cpu["tokenise"] + cpu["offsets"]) / cpu["predict"]}))


if __name__ == "__main__":
    main()
