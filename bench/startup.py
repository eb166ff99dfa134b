"""What `kd --help` and refused commands spend before their first line of output (issue 27): each
case is a fresh `python -X importtime -m kd ...` process, timed for wall and CPU (user + system) time,
with the import time Python reports (the sum of the top-level imports' cumulative times) and which
heavy packages it loaded. `--code DIR` measures another checkout (e.g. the code before a change,
`git archive COMMIT | tar -x -C DIR`); several `--code` are interleaved, run by run, so every
checkout meets the same load. The machine's load average is printed with the figures: wall times on
a shared machine say little without it.

    python bench/startup.py --code /tmp/kd-before --code . --repeats 5
"""
from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HEAVY = ("torch", "mlflow", "sklearn", "scipy", "pandas", "transformers", "distributed", "optuna", "seqeval")
# Refusals a user meets most (tests/test_bad_input.py has them all): nothing found, a bad value, a bad file.
CASES = {
    "help": ["--help"],
    "train: no such corpus": ["train", "--task", "nowhere", "--data-dir", "{tmp}"],
    "train: --epochs 0": ["train", "--task", "tiny", "--data-dir", "{tmp}", "--epochs", "0"],
    "train: a bad line in the corpus": ["train", "--task", "bad", "--data-dir", "{tmp}"],
    "distill: --alpha 1.5": ["distill", "--task", "tiny", "--data-dir", "{tmp}", "--cache", "f" * 32, "--alpha", "1.5"],
    "cache-logits: unknown teacher": ["cache-logits", "--teacher", "f" * 32],
    "predict: no input file": ["predict", "--model", "f" * 32, "--input", "{tmp}/nowhere.txt"],
    "plan show: no plan file": ["plan", "show", "{tmp}/nowhere.yaml"],
    "compare: unknown experiment": ["compare", "--experiment", "nowhere", "--no-log"],
}
IMPORT_LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \| ( *)(\S+)")


def run_once(code: Path, args: list[str], workdir: Path) -> dict:
    """One fresh process; its figures."""
    env = {**os.environ, "PYTHONPATH": str(code), "MLFLOW_TRACKING_URI": f"sqlite:///{workdir}/mlflow.db"}
    env.pop("KD_DATA_DIR", None)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "kd", *args], cwd=workdir, env=env,
                            capture_output=True, text=True, timeout=300)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    imports, loaded = 0, set()
    for line in result.stderr.splitlines():
        match = IMPORT_LINE.match(line)
        if match:
            imports += int(match[2]) if not match[3] else 0  # top level: its cumulative time
            loaded.add(match[4].split(".")[0])
    message = [line for line in result.stderr.splitlines() if not line.startswith("import time:")]
    return {"wall": wall, "cpu": after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime,
            "imports": imports / 1e6, "heavy": sorted(loaded & set(HEAVY)), "code": result.returncode,
            "message": (message[-1] if message else result.stdout.splitlines()[0])[:90]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--code", action="append", default=None, help="Checkout to measure (repeatable; default .).")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", default=None, help="Only the cases whose name contains this.")
    options = parser.parse_args()
    codes = [Path(c).resolve() for c in (options.code or ["."])]
    cases = {name: args for name, args in CASES.items() if not options.only or options.only in name}
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for corpus, line in (("tiny", "aspirin\tB-Chemical"), ("bad", "aspirin")):  # `bad`: one column
            (work / corpus).mkdir()
            for split in ("train", "devel", "test"):
                (work / corpus / f"{split}.tsv").write_text(f"the\tO\n{line}\n\n")
        figures: dict[tuple[str, Path], list[dict]] = {}
        for _ in range(options.repeats):
            for name, args in cases.items():
                for code in codes:  # interleaved: the checkouts share the machine's moments
                    figures.setdefault((name, code), []).append(
                        run_once(code, [a.format(tmp=tmp) for a in args], work))
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("| case | code | wall s (median) | CPU s | imports s | exit | heavy packages loaded |")
    print("|---|---|---|---|---|---|---|")
    for (name, code), runs in figures.items():
        median = {key: statistics.median(r[key] for r in runs) for key in ("wall", "cpu", "imports")}
        print(f"| {name} | {code.name} | {median['wall']:.2f} | {median['cpu']:.2f} | {median['imports']:.2f} | "
              f"{runs[0]['code']} | {', '.join(runs[0]['heavy']) or '-'} |")
    for (name, code), runs in figures.items():
        print(f"{name} [{code.name}]: {runs[0]['message']}")


if __name__ == "__main__":
    main()
