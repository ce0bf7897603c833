"""The serving server speaks the Open Inference Protocol to a standard client (tritonclient),
answers with the trained model's predictions, batches concurrent requests into shared forward
passes, refuses bad input with a 400 that names the field, is ready only once its model is
loaded and warmed up, and drains on SIGTERM without failing a request."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.http as triton

from distml_runtime.distenv import free_port
from distml_runtime.train import checkpoint
from distml_runtime.train.data import load_digits_tensors
from distml_runtime.train.ddp import build_model


def _get(port: int, path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _post(port: int, path: str, body: bytes) -> tuple[int, dict]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


class Server:
    def __init__(self, folder: Path, *extra: str) -> None:
        self.port, self.metrics = free_port(), free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "distml_runtime.serve", "--host", "127.0.0.1",
             "--port", str(self.port), "--metrics-port", str(self.metrics),
             "--checkpoint-dir", str(folder), "--max-queue-delay-ms", "50", *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

    def answers(self, path: str) -> int | None:
        """The status of GET path; None while nothing listens. Fails the test if the server
        has exited."""
        if self.proc.poll() is not None:
            pytest.fail(f"the server exited {self.proc.returncode}: {self.proc.stderr.read()}")
        try:
            return _get(self.port, path)[0]
        except OSError:
            return None

    def wait_for(self, path: str, code: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.answers(path) != code:
            if time.monotonic() > deadline:
                pytest.fail(f"GET {path} did not answer {code} within {timeout}s")
            time.sleep(0.1)

    def metric(self, name: str) -> float:
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics}/metrics", timeout=5)
        lines = text.read().decode().splitlines()
        return sum(float(li.split()[-1]) for li in lines if li.startswith(name))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=30)


def _trained(folder: Path, seed: int = 7) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model()
    checkpoint.save(folder, 1, {"model": model.state_dict(), "step": 1, "world_size": 1})
    return model.eval()


@pytest.fixture
def server(tmp_path):
    model = _trained(tmp_path)
    s = Server(tmp_path)
    s.wait_for("/v2/health/ready", 200)
    yield s, model
    s.stop()


def test_a_standard_client_finds_it_live_ready_and_describing_its_model(server):
    s, _ = server
    client = triton.InferenceServerClient(f"127.0.0.1:{s.port}")
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("digits") and not client.is_model_ready("other")
    meta = client.get_model_metadata("digits")
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    assert [o["name"] for o in meta["outputs"]] == ["logits", "label"]
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]


def test_concurrent_requests_get_the_models_answers_in_shared_batches(server):
    s, model = server
    x, _ = load_digits_tensors()
    rows = [x[i : i + 2].numpy() for i in range(0, 32, 2)]
    client = triton.InferenceServerClient(f"127.0.0.1:{s.port}", concurrency=16)
    pending = []
    for i, r in enumerate(rows):
        inp = triton.InferInput("input", list(r.shape), "FP32")
        inp.set_data_from_numpy(r, binary_data=i % 2 == 0)  # both encodings
        outs = [triton.InferRequestedOutput("logits", binary_data=i % 2 == 0),
                triton.InferRequestedOutput("label", binary_data=False)]  # fmt: skip
        pending.append(client.async_infer("digits", [inp], outputs=outs, request_id=str(i)))
    with torch.no_grad():
        for r, req in zip(rows, pending, strict=True):
            answer = req.get_result()
            want = model(torch.from_numpy(r))
            np.testing.assert_allclose(
                answer.as_numpy("logits"), want.numpy(), rtol=1e-5, atol=1e-6
            )
            assert answer.as_numpy("label").tolist() == want.argmax(1).tolist()
    # Every row went through the model once, after the warm-up's one row in its own pass.
    assert s.metric("distml_serve_batch_size_sum") == 32 + 1
    assert s.metric("distml_serve_batch_size_count") - 1 < 16, "requests shared forward passes"
    assert s.metric('distml_serve_requests_total{code="200"}') == 16


def _request(**over) -> dict:
    tensor = {"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [0.0] * 64}
    return {"inputs": [{**tensor, **over}]}


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"inputs": []}, "'inputs' must be a non-empty list"),
        ({"rows": [[0.0] * 64]}, "request: missing 'inputs'"),
        (_request(name="x"), "the model has no input 'x' (it takes input)"),
        (_request(datatype="FP64"), "input 'input' is FP32, not FP64"),
        (_request(shape=[1, 63], data=[0.0] * 63), "has shape [-1, 64] (-1: any), got [1, 63]"),
        (_request(data=[0.0] * 10), "'data' holds 10 values, shape [1, 64] needs 64"),
        (_request(data=["x"] * 64), "'data' holds something that is not FP32"),
        (_request(shape=[33, 64], data=[0.0] * 64 * 33), "33 rows; this model takes 1 to 32"),
        (_request(data=[float("nan")] * 64), "values must be finite"),
        ({**_request(), "outputs": [{"name": "probs"}]}, "the model has no output 'probs'"),
    ],
)
def test_malformed_requests_get_a_400_that_names_the_field(server, doc, message):
    code, body = _post(server[0].port, "/v2/models/digits/infer", json.dumps(doc).encode())
    assert code == 400 and message in body["error"]


def test_an_unknown_model_is_a_404_and_an_oversized_body_a_413(server):
    s, _ = server
    code, body = _post(s.port, "/v2/models/other/infer", json.dumps(_request()).encode())
    assert code == 404 and "this server serves 'digits' version 1" in body["error"]
    code, body = _post(s.port, "/v2/models/digits/infer", b"x" * (9 << 20))
    assert code == 413 and "larger than" in body["error"]
    assert _get(s.port, "/v2/health/ready")[0] == 200  # and it goes on serving


def test_it_is_ready_only_once_its_checkpoint_is_there_and_a_warm_up_passed(tmp_path):
    s = Server(tmp_path)
    try:
        s.wait_for("/v2/health/live", 200)
        code, body = _get(s.port, "/v2/health/ready")
        assert code == 503 and f"waiting for a checkpoint in {tmp_path}" in body["reason"]
        code, body = _post(s.port, "/v2/models/digits/infer", json.dumps(_request()).encode())
        assert code == 503 and "not ready" in body["error"]
        model = _trained(tmp_path, seed=3)
        s.wait_for("/v2/health/ready", 200, timeout=30)
        x = load_digits_tensors()[0][:1]
        code, body = _post(s.port, "/v2/models/digits/infer",
                           json.dumps(_request(data=x.flatten().tolist())).encode())  # fmt: skip
        with torch.no_grad():
            assert code == 200 and body["outputs"][1]["data"] == model(x).argmax(1).tolist()
        # The warm-up went through the batcher: one forward pass before the first request.
        assert s.metric("distml_serve_batch_size_count") == 2
    finally:
        s.stop()


def test_sigterm_drains_not_ready_at_once_and_no_request_fails(tmp_path):
    _trained(tmp_path)
    s = Server(tmp_path, "--drain-seconds", "3")
    try:
        s.wait_for("/v2/health/ready", 200)
        body = json.dumps(_request()).encode()
        codes: list[int] = []
        routed = threading.Event()  # while set, clients still send here (endpoints lag)
        routed.set()

        def client() -> None:
            while routed.is_set():
                codes.append(_post(s.port, "/v2/models/digits/infer", body)[0])

        senders = [threading.Thread(target=client) for _ in range(4)]
        for t in senders:
            t.start()
        time.sleep(0.5)
        s.proc.send_signal(signal.SIGTERM)
        s.wait_for("/v2/health/ready", 503, timeout=2)
        sent_before = len(codes)
        time.sleep(1.5)  # the endpoints controller takes it out meanwhile
        routed.clear()
        for t in senders:
            t.join(timeout=30)
        out, _ = s.proc.communicate(timeout=30)
        assert s.proc.returncode == 0
        assert len(codes) > sent_before > 0, "requests went on during the drain"
        assert set(codes) == {200}, f"{len(codes) - codes.count(200)} requests failed"
        assert [json.loads(li)["event"] for li in out.splitlines() if li.startswith("{")][-2:] == [
            "draining",
            "stopped",
        ]
    finally:
        s.stop()
