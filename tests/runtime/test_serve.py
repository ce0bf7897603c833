"""The serving server answers with the trained model's predictions, batches concurrent requests
into one forward pass, refuses malformed input with a clear 400, and exports its metrics."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from distml_runtime.distenv import free_port
from distml_runtime.train import checkpoint
from distml_runtime.train.data import load_digits_tensors
from distml_runtime.train.ddp import build_model


def _post(port: int, doc: object) -> tuple[int, dict]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/predict", data=json.dumps(doc).encode(), method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.fixture
def server(tmp_path):
    torch.manual_seed(7)
    model = build_model()
    checkpoint.save(tmp_path, 1, {"model": model.state_dict(), "step": 1, "world_size": 1})
    port, metrics = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "distml_runtime.serve", "--host", "127.0.0.1", "--port", str(port),
         "--metrics-port", str(metrics), "--checkpoint-dir", str(tmp_path), "--max-wait-ms", "50"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
            break
        except OSError:
            assert proc.poll() is None, "the server exited"
            time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("the server did not answer /healthz within 60 s")
    yield port, metrics, model.eval()
    proc.terminate()
    proc.wait(timeout=30)


def test_concurrent_requests_get_the_models_answers_in_shared_batches(server):
    port, metrics, model = server
    x, _ = load_digits_tensors()
    rows = [x[i : i + 2] for i in range(0, 32, 2)]
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda r: _post(port, {"inputs": r.tolist()}), rows))
    with torch.no_grad():
        for r, (code, doc) in zip(rows, answers, strict=True):
            assert code == 200
            want = model(r)
            torch.testing.assert_close(torch.tensor(doc["logits"]), want, rtol=1e-5, atol=1e-5)
            assert doc["predictions"] == want.argmax(1).tolist()
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5).read().decode()
    count = float(
        next(
            li for li in text.splitlines() if li.startswith("distml_serve_batch_size_count")
        ).split()[1]
    )
    total = float(
        next(
            li for li in text.splitlines() if li.startswith("distml_serve_batch_size_sum")
        ).split()[1]
    )
    assert total == 32, "every row went through the model once"
    assert count < 16, "concurrent requests shared forward passes"
    assert 'distml_serve_requests_total{code="200"} 16.0' in text
    assert "distml_serve_request_duration_seconds_bucket" in text


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"inputs": []}, "at least one row"),
        ({"rows": [[0.0] * 64]}, 'expected {"inputs"'),
        ({"inputs": [[0.0] * 63]}, "inputs[0] must be a list of 64 numbers"),
        ({"inputs": [[0.0] * 63 + ["x"]]}, "inputs[0] holds something that is not a number"),
    ],
)
def test_malformed_requests_get_a_400_that_says_what_is_wrong(server, doc, message):
    code, body = _post(server[0], doc)
    assert code == 400
    assert message in body["error"]
