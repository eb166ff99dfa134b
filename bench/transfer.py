"""Transfer text (issue 24): what leaks, what it costs, where it comes from, how it is tokenised.

    python bench/transfer.py agreement [--data-dir ../shared/datasets] [--out FILE]
        Part 4: token agreement of tokenisers with every corpus (bench/transfer_agreement.py).
    python bench/transfer.py students [--data-dir ../shared/datasets] [--parts leakage,cost,elsewhere]
        [--corpora ...] [--text-corpora ...] [--devel-sentences N] [--student NCBI-disease] [--train-sentences N] [--text-sentences N]
        [--teacher-epochs N] [--student-epochs N] [--seeds 1,2,3] [--model JSON] [--training JSON] [--out FILE]
        [--student-train-sentences N]
        Parts 1-3 (bench/transfer_students.py).
    python bench/transfer.py summary SEED.json [SEED.json ...] [--out FILE]
        One table from `students` runs of single seeds (their per_seed lists joined, in seed order).

Figures and the commands that made them: bench/README.md, "Transfer text".
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

# The six corpora of experiments/information2023-cpu.yaml.
SIX_CORPORA = "NCBI-disease,BC5CDR,AnatEM,BC2GM,BioNLP09,BioNLP13PC"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["agreement", "students", "summary"])
    parser.add_argument("runs", nargs="*", type=Path, help="summary: the JSON files of `students` runs")
    parser.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "datasets")
    parser.add_argument("--corpora", default=None, help="default: all ten (agreement), the six (students)")
    parser.add_argument("--parts", default="leakage,cost,elsewhere")
    parser.add_argument("--student", default="NCBI-disease")
    parser.add_argument("--text-corpora", default=SIX_CORPORA, help="part 3's text comes from these")
    parser.add_argument("--devel-sentences", type=int, default=0, help="cut devel to this many (0: whole)")
    parser.add_argument("--train-sentences", type=int, default=1000)
    parser.add_argument("--student-train-sentences", type=int, default=None,
                        help="the student corpus's labelled sentences (default --train-sentences; 0: whole split)")
    parser.add_argument("--text-sentences", type=int, default=2000)
    parser.add_argument("--teacher-epochs", type=int, default=20)
    parser.add_argument("--student-epochs", type=int, default=10)
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--model", default="{}", help='TaggerConfig options as JSON, e.g. {"shared_hidden": 100}')
    parser.add_argument("--training", default="{}", help='TrainingOptions as JSON, e.g. {"learning_rate": 0.005}')
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.what == "agreement":
        from transfer_agreement import agreement

        corpora = args.corpora.split(",") if args.corpora else sorted(
            p.name for p in args.data_dir.iterdir() if (p / "train.tsv").is_file())
        results = agreement(args.data_dir, corpora, lambda line: print(line, flush=True))
    elif args.what == "summary":
        from transfer_students import summarise

        runs = [json.loads(path.read_text()) for path in args.runs]
        per_seed = [seed for run in sorted(runs, key=lambda r: r["config"]["seeds"]) for seed in run["per_seed"]]
        results = {"config": [run["config"] for run in runs], "table": summarise(per_seed), "per_seed": per_seed}
    else:
        from transfer_students import students

        args.corpora = (args.corpora or SIX_CORPORA).split(",")
        args.text_corpora = args.text_corpora.split(",")
        results = students(args)
    text = json.dumps(results, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
