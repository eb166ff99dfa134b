"""`mlflow models serve` of a student answers raw-text requests (issue 29): the server run as the
README shows it (127.0.0.1, --env-manager local), one request of two documents, its entities
checked against the input strings and against the logged model loaded in process."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from kd.models.inference import SavedTagger
from kd.models.raw_text import tag_documents
from kd.tracking.logged_models import load_logged_tagger
from tests.conftest import SMALL_MODEL, run_kd, subprocess_env

pytestmark = pytest.mark.slow
DOCUMENTS = ["The patient was given aspirin for fever. Cisplatin caused no signs of cancer syndrome.",
             "Naïve patients showed severe asthma and diabetes 🧪 with caffeine sulfate."]
# Starting the server (importing MLflow, FastAPI and torch, loading the model) took about 10 s on the
# shared 2-core machine; the wait is bounded well above that.
SERVER_START_LIMIT_S = 120


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_up(server: subprocess.Popen, port: int) -> None:
    deadline = time.monotonic() + SERVER_START_LIMIT_S
    while time.monotonic() < deadline:
        assert server.poll() is None, server.stderr.read().decode(errors="replace")[-3000:]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
    pytest.fail(f"the server did not answer /ping within {SERVER_START_LIMIT_S} s")


def test_a_served_student_answers_raw_text(data_dir, tracking, tmp_path):
    run_id = run_kd("train", "--task", data_dir / "tiny", "--epochs", "10", *SMALL_MODEL, "--batch-size", "16",
                    "--learning-rate", "0.02", "--output", "crf", "--json")["run_id"]
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"runs:/{run_id}/model", "--env-manager", "local",
         "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
        env=subprocess_env(tracking), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tmp_path)
    try:
        wait_until_up(server, port)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", headers={"Content-Type": "application/json"},
            data=json.dumps({"dataframe_records": [{"text": text} for text in DOCUMENTS]}).encode())
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())
    finally:
        server.terminate()
        server.wait(timeout=30)
    served = answer["predictions"]
    expected = tag_documents(SavedTagger(load_logged_tagger(run_id, tracking)), DOCUMENTS)
    assert len(served) == len(DOCUMENTS)
    for document, entities, in_process in zip(DOCUMENTS, served, expected):
        assert [(e["start"], e["end"], e["label"], e["text"]) for e in entities] == \
               [(e.start, e.end, e.label, e.text) for e in in_process]
        assert [e["score"] for e in entities] == pytest.approx([e.score for e in in_process], abs=1e-6)
        assert all(document[e["start"]:e["end"]] == e["text"] and 0 < e["score"] <= 1 for e in entities)
    found = {(e["text"], e["label"]) for entities in served for e in entities}
    assert ("aspirin", "Chemical") in found and ("asthma", "Disease") in found, found
