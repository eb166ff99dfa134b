"""How the CPU thread settings share a machine: one training epoch of `kd train` on a subsample of a
corpus, alone and next to one busy process, for each thread setting, interleaved so that every
setting meets the same conditions (other work on the machine included).

Settings:
  torch default        torch's own thread count (all cores) and libgomp's default waiting, which spins
                       before it sleeps (the click group called directly, with --threads <cores>)
  kd default           `kd train` as users run it: the thread count follows the machine's load
                       (kd.training.threads: the free cores, one thread while another process is busy)
  1 thread, passive    kd's default before the count followed the load (OMP_WAIT_POLICY=PASSIVE, 1 thread
                       on 2 cores)
  --threads 1          one torch thread
  passive, all cores   `kd train --threads <cores>` with OMP_WAIT_POLICY=PASSIVE
  active, all cores    OMP_WAIT_POLICY=ACTIVE (threads spin while they wait, without end)
  spin N, all cores    GNU OpenMP's GOMP_SPINCOUNT=N: threads spin N rounds, then sleep (bounded
                       spinning; libgomp's own default without a wait policy is 300,000); `--settings`
                       picks them

Each run is a fresh process (`--epochs 1`, small sizes stay the defaults); the figures are its wall
time and its CPU time (user + system, of the process and its children).

    python bench/threads.py --data-dir ../shared/datasets --corpus NCBI-disease --sentences 1000 --repeats 2
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OLD_DEFAULT = "import sys; from kd.cli.main import cli; sys.argv[0] = 'kd'; cli(prog_name='kd')"
ALL_CORES = ["--threads", str(os.cpu_count())]
# setting -> (command, its arguments, environment variables of its own)
SETTINGS = {
    "torch default": ([sys.executable, "-c", OLD_DEFAULT], ALL_CORES, {}),
    "kd default": ([sys.executable, "-m", "kd"], [], {}),
    "1 thread, passive": ([sys.executable, "-m", "kd"], ["--threads", "1"], {"OMP_WAIT_POLICY": "PASSIVE"}),
    "--threads 1": ([sys.executable, "-m", "kd"], ["--threads", "1"], {}),
    "passive, all cores": ([sys.executable, "-m", "kd"], ALL_CORES, {"OMP_WAIT_POLICY": "PASSIVE"}),
    "active, all cores": ([sys.executable, "-m", "kd"], ALL_CORES, {"OMP_WAIT_POLICY": "ACTIVE"}),
    "spin 10k, all cores": ([sys.executable, "-m", "kd"], ALL_CORES, {"GOMP_SPINCOUNT": "10000"}),
    "spin 100k, all cores": ([sys.executable, "-m", "kd"], ALL_CORES, {"GOMP_SPINCOUNT": "100000"}),
    "spin 1M, all cores": ([sys.executable, "-m", "kd"], ALL_CORES, {"GOMP_SPINCOUNT": "1000000"}),
}
CONDITIONS = {"alone": 0, "one busy process": 1, "two busy processes": 2}


def first_sentences(source: Path, count: int) -> str:
    """The first `count` sentences (blank-line separated blocks) of a CoNLL file."""
    blocks, current = [], []
    for line in source.read_text(encoding="utf-8").splitlines():
        if line.strip():
            current.append(line)
        elif current:
            blocks.append("\n".join(current))
            current = []
            if len(blocks) == count:
                break
    if current and len(blocks) < count:
        blocks.append("\n".join(current))
    return "\n\n".join(blocks) + "\n\n"


def subsample(corpus: Path, target: Path, sentences: int) -> Path:
    target.mkdir(parents=True)
    for split, count in (("train", sentences), ("devel", sentences // 5), ("test", sentences // 5)):
        (target / f"{split}.tsv").write_text(first_sentences(corpus / f"{split}.tsv", count), encoding="utf-8")
    return target


def busy_loop() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def timed_run(command: list[str], workdir: Path, env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one process, measured with wait4's resource usage."""
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{process.stderr.read().decode()[-2000:]}")
    return wall, usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "datasets")
    parser.add_argument("--corpus", default="NCBI-disease")
    parser.add_argument("--sentences", type=int, default=1000, help="Training sentences of the subsample.")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json-out", type=Path, default=None)
    parser.add_argument("--settings", default=";".join(SETTINGS),
                        help="Settings to run, separated by ; (default: all).")
    parser.add_argument("--conditions", default=",".join(CONDITIONS),
                        help="Comma-separated conditions (default: all).")
    args = parser.parse_args()

    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="kd-threads-") as scratch:
        scratch = Path(scratch)
        corpus = subsample(args.data_dir / args.corpus, scratch / args.corpus, args.sentences)
        env = {key: value for key, value in os.environ.items()
               if key not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "MKL_NUM_THREADS",
                              "MLFLOW_RUN_ID")}
        env.update(MLFLOW_TRACKING_URI=f"sqlite:///{scratch / 'mlflow.db'}", PYTHONPATH=str(REPO))
        for repeat in range(args.repeats):
            for condition in args.conditions.split(","):
                busy = CONDITIONS[condition]
                competitors = [busy_loop() for _ in range(busy)]
                try:
                    for setting in args.settings.split(";"):
                        command, extra, own_env = SETTINGS[setting]
                        full = [*command, "train", "--task", str(corpus), "--epochs", "1", "--experiment", "threads",
                                "--checkpoint-dir", str(scratch / "checkpoints"), "--json", *extra]
                        wall, cpu = timed_run(full, scratch, {**env, **own_env})
                        results.setdefault((condition, setting), []).append((wall, cpu))
                        print(f"repeat {repeat + 1}, {condition}, {setting}: {wall:.1f} s wall, {cpu:.1f} s CPU",
                              file=sys.stderr, flush=True)
                finally:
                    for competitor in competitors:
                        competitor.kill()
                        competitor.wait()
    print(f"\nkd train --epochs 1 on {args.sentences} sentences of {args.corpus}, {os.cpu_count()} CPUs, "
          f"medians of {args.repeats} (interleaved)\n")
    print("| condition | setting | wall s | CPU s | runs (wall s) |\n|---|---|---|---|---|")
    for (condition, setting), runs in results.items():
        walls = [wall for wall, _ in runs]
        print(f"| {condition} | {setting} | {statistics.median(walls):.1f} | "
              f"{statistics.median(cpu for _, cpu in runs):.1f} | {', '.join(f'{w:.1f}' for w in walls)} |")
    if args.json_out:
        args.json_out.write_text(json.dumps({f"{c} / {s}": runs for (c, s), runs in results.items()}, indent=2))


if __name__ == "__main__":
    main()
