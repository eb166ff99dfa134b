"""Start-up (issue 27): a refused command loads nothing it does not need before it says why. Each case
runs in a fresh interpreter (what a user's `kd` is) and reports which heavy packages were imported
by the time the refusal was printed; bench/startup.py has the times."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO, write_corpus

HEAVY = ("torch", "mlflow", "sklearn", "scipy", "pandas", "transformers", "distributed")
PROBE = """
import json, sys
from click.testing import CliRunner
from kd.cli.main import cli
result = CliRunner().invoke(cli, sys.argv[1:])
print(json.dumps({"code": result.exit_code, "output": result.output,
                  "loaded": sorted(name for name in %r if name in sys.modules)}))
""" % (HEAVY,)


def loaded_by(tmp_path, *args) -> tuple[int, str, list[str]]:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/m.db",
           "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", PROBE, *map(str, args)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return report["code"], report["output"], report["loaded"]


@pytest.mark.parametrize("args, needle, allowed", [
    (["--help"], "Usage", []),
    (["train", "--task", "nowhere", "--data-dir", "{tmp}"], "corpus 'nowhere' not found", []),
    (["distill", "--task", "nowhere", "--cache", "f" * 32, "--data-dir", "{tmp}"], "corpus 'nowhere' not found", []),
    (["train-teacher", "--kind", "transformer", "--base", "x", "--tasks", "tiny,nowhere", "--data-dir", "{tmp}"],
     "corpus 'nowhere' not found", []),
    (["predict", "--model", "f" * 32, "--input", "{tmp}/nowhere.txt"], "nowhere.txt: file not found", []),
    # The corpus is read before the tracking store opens: torch (the training options' module), no more.
    (["train", "--task", "bad", "--data-dir", "{tmp}"], "bad/train.tsv:2", ["torch"]),
], ids=["help", "train", "distill", "train-teacher", "predict", "bad-line"])
def test_a_refusal_loads_only_what_it_needs(tmp_path, args, needle, allowed):
    write_corpus(tmp_path / "tiny", {"train": 3, "devel": 2, "test": 2})
    write_corpus(tmp_path / "bad", {"train": 3, "devel": 2, "test": 2})
    (tmp_path / "bad" / "train.tsv").write_text("the\tO\naspirin\n")
    code, output, loaded = loaded_by(tmp_path, *[a.format(tmp=tmp_path) for a in args])
    assert code == (0 if args == ["--help"] else 2) and needle in output, output
    assert loaded == allowed, f"loaded {loaded} before: {output.strip()}"
