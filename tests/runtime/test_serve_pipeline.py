"""A serving replica split into stage processes: stage 0 speaks the Open Inference Protocol, the
activations stream through the others over TCP, and a real client (tritonclient) gets what the
whole model gives in one process, from a checkpoint too; it is ready only once every stage is
linked and a warm-up went round; a stage killed makes stage 0 fail its requests and exit, and
the surviving stages exit too, so the whole group can be replaced."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.http as triton
from torch import nn

from distml_runtime.distenv import free_port
from distml_runtime.serve.stages import LOST_PEER_EXIT, model_layers
from distml_runtime.train import checkpoint
from distml_runtime.train.data import load_digits_tensors
from distml_runtime.train.ddp import build_model

from .test_serve import Server, _get

WIDTHS = (96, 160, 48)  # 4 layers


def _rows(n: int) -> np.ndarray:
    x, _ = load_digits_tensors()
    return x[:n].numpy().astype(np.float32)


class Replica:
    """A replica of `len(cuts) + 1` stage processes on this machine (the later stages started
    first, unless `later_first` is False: then by `start_later`)."""

    def __init__(
        self,
        cuts: list[int],
        folder: str = "",
        microbatches: int = 3,
        widths: tuple[int, ...] = WIDTHS,
        later_first: bool = True,
    ) -> None:
        edges = [0, *cuts, len(widths) + 1]
        self.k = len(edges) - 1
        ports = [free_port() for _ in range(self.k)]
        ranges = ",".join(f"{a}:{b}" for a, b in itertools.pairwise(edges))
        self.env = [
            {
                **os.environ,
                "DISTML_MODEL_WIDTHS": ",".join(map(str, widths)),
                "DISTML_STAGE": str(stage),
                "DISTML_STAGES": str(self.k),
                "DISTML_STAGE_RANGES": ranges,
                "DISTML_STAGE_LISTEN": str(ports[stage]),
                "DISTML_STAGE_NEXT": f"127.0.0.1:{ports[(stage + 1) % self.k]}",
                "DISTML_MICROBATCHES": str(microbatches),
                "DISTML_PEER_TIMEOUT_SECONDS": "3",
                "DISTML_CHECKPOINT_DIR": folder,
            }
            for stage in range(self.k)
        ]
        self.later: list[subprocess.Popen[str]] = []
        if later_first:
            self.start_later()
        saved = dict(os.environ)
        os.environ.update(self.env[0])
        try:
            self.head = Server(Path(folder), "--checkpoint-dir", folder)
        finally:
            os.environ.clear()
            os.environ.update(saved)

    def start_later(self) -> None:
        self.later = [
            subprocess.Popen([sys.executable, "-m", "distml_runtime.serve"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for env in self.env[1:]
        ]  # fmt: skip

    def stop(self) -> None:
        for p in [self.head.proc, *self.later]:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=10)


@pytest.fixture
def replicas():
    made: list[Replica] = []
    yield lambda *a, **kw: made.append(Replica(*a, **kw)) or made[-1]
    for r in made:
        r.stop()


def _infer(port: int, rows: np.ndarray) -> np.ndarray:
    client = triton.InferenceServerClient(f"127.0.0.1:{port}")
    inp = triton.InferInput("input", list(rows.shape), "FP32")
    inp.set_data_from_numpy(rows)
    return client.infer("digits", [inp]).as_numpy("logits")


@pytest.mark.parametrize("cuts", [[2], [1, 2, 3]], ids=["2-stages", "4-stages"])
def test_a_split_replica_answers_what_the_whole_model_does(replicas, cuts):
    r = replicas(cuts)
    r.head.wait_for("/v2/health/ready", 200, timeout=120)
    whole = nn.Sequential(*model_layers(WIDTHS)).eval()
    rows = _rows(31)  # micro-batches of 11, 10 and 10 rows
    with torch.inference_mode():
        expected = whole(torch.from_numpy(rows)).numpy()
    np.testing.assert_allclose(_infer(r.head.port, rows), expected, rtol=1e-5, atol=1e-6)
    # Concurrent clients: batches overlap in the stages, and every answer is its own rows'.
    got: dict[int, np.ndarray] = {}

    def client(i: int) -> None:
        got[i] = _infer(r.head.port, rows[i : i + 5])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for i in range(16):
        np.testing.assert_allclose(got[i], expected[i : i + 5], rtol=1e-5, atol=1e-6)


def test_a_split_replica_serves_a_checkpoint_as_one_process_would(replicas, tmp_path):
    torch.manual_seed(7)
    trained = build_model(64)  # train.ddp's model and state_dict layout, widths (64, 64)
    checkpoint.save(tmp_path, 5, {"model": trained.state_dict(), "step": 5})
    r = replicas([1], folder=str(tmp_path), widths=(64, 64))
    r.head.wait_for("/v2/health/ready", 200, timeout=120)
    rows = _rows(9)
    with torch.inference_mode():
        expected = trained.eval()(torch.from_numpy(rows)).numpy()
    np.testing.assert_allclose(_infer(r.head.port, rows), expected, rtol=1e-5, atol=1e-6)


def test_it_is_not_ready_until_every_stage_is_linked(replicas):
    r = replicas([2], later_first=False)
    r.head.wait_for("/v2/health/live", 200, timeout=60)
    time.sleep(1)
    code, body = _get(r.head.port, "/v2/health/ready")
    assert code == 503 and "other stages" in body["reason"]
    r.start_later()
    r.head.wait_for("/v2/health/ready", 200, timeout=120)


def test_a_killed_stage_takes_its_whole_replica_down(replicas):
    r = replicas([1, 2])
    r.head.wait_for("/v2/health/ready", 200, timeout=120)
    rows = _rows(4)
    _infer(r.head.port, rows)
    t0 = time.monotonic()
    r.later[0].kill()  # stage 1
    assert r.head.proc.wait(timeout=30) == LOST_PEER_EXIT
    took = time.monotonic() - t0
    assert r.later[1].wait(timeout=30) == LOST_PEER_EXIT  # stage 2 lost stage 1 too
    out = r.head.proc.stdout.read()
    assert "peer-lost" in out, out[-2000:]
    assert took < 10, f"stage 0 took {took:.1f}s to notice"
