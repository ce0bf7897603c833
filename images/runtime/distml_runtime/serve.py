"""The serving server: HTTP inference with dynamic batching, and Prometheus metrics.

    python -m distml_runtime.serve --port 8000 --checkpoint-dir /ckpt --max-batch 32 --max-wait-ms 5
    curl -s localhost:8000/v1/predict -d '{"inputs": [[0.0, ...64 values...]]}'

Requests that arrive together are run as one batch: the batcher takes what is queued, waits at
most --max-wait-ms for more, up to --max-batch rows, then runs one forward pass. That trades a few
milliseconds of latency for throughput, the book's main lever for serving. The model is the
digits MLP of `train.ddp`, loaded from the newest checkpoint when one is given.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import queue
import sys
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import torch
from prometheus_client import Counter, Gauge, Histogram, start_http_server
from torch import nn

from distml_runtime.pipeline.models import DIGITS_FEATURES

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
REQUESTS = Counter("distml_serve_requests", "Prediction requests answered", ["code"])
REQUEST_SECONDS = Histogram(
    "distml_serve_request_duration_seconds",
    "From a request's arrival to its answer, queueing included",
    buckets=_LATENCY,
)
BATCH_ROWS = Histogram(
    "distml_serve_batch_size",
    "Rows per forward pass",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
INFERENCE_SECONDS = Histogram(
    "distml_serve_inference_duration_seconds", "One batched forward pass", buckets=_LATENCY
)
QUEUE_DEPTH = Gauge("distml_serve_queue_depth", "Requests waiting for the batcher")


class BadRequest(ValueError):
    pass


def parse_inputs(body: bytes, features: int) -> torch.Tensor:
    """The request's rows as a float tensor, or BadRequest saying what is wrong with them."""
    try:
        doc = json.loads(body or b"null")
    except json.JSONDecodeError as err:
        raise BadRequest(f"the body is not JSON: {err}") from None
    rows = doc.get("inputs") if isinstance(doc, dict) else None
    if not isinstance(rows, list) or not rows:
        raise BadRequest('expected {"inputs": [[...], ...]} with at least one row')
    for i, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != features:
            raise BadRequest(f"inputs[{i}] must be a list of {features} numbers")
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in row):
            raise BadRequest(f"inputs[{i}] holds something that is not a number")
    return torch.tensor(rows, dtype=torch.float32)


@dataclass
class _Request:
    rows: torch.Tensor
    done: Future[torch.Tensor] = field(default_factory=Future)


class Batcher:
    """One thread runs the model; request threads queue their rows and wait on a future."""

    def __init__(self, model: nn.Module, max_batch: int, max_wait: float) -> None:
        self.model, self.max_batch, self.max_wait = model.eval(), max_batch, max_wait
        self.queue: queue.Queue[_Request] = queue.Queue()
        self.thread = threading.Thread(target=self._loop, name="batcher", daemon=True)
        self.thread.start()

    def predict(self, rows: torch.Tensor, timeout: float = 30.0) -> torch.Tensor:
        request = _Request(rows)
        self.queue.put(request)
        QUEUE_DEPTH.set(self.queue.qsize())
        return request.done.result(timeout=timeout)

    def _take_batch(self) -> list[_Request]:
        batch = [self.queue.get()]
        rows = len(batch[0].rows)
        deadline = time.monotonic() + self.max_wait
        while rows < self.max_batch:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                nxt = self.queue.get(timeout=left)
            except queue.Empty:
                break
            batch.append(nxt)
            rows += len(nxt.rows)
        QUEUE_DEPTH.set(self.queue.qsize())
        return batch

    def _loop(self) -> None:
        while True:
            batch = self._take_batch()
            x = torch.cat([r.rows for r in batch])
            t0 = time.perf_counter()
            try:
                with torch.inference_mode():
                    out = self.model(x)
            except Exception as err:  # a bad batch fails its requests, not the server
                for r in batch:
                    r.done.set_exception(err)
                continue
            INFERENCE_SECONDS.observe(time.perf_counter() - t0)
            BATCH_ROWS.observe(len(x))
            start = 0
            for r in batch:
                r.done.set_result(out[start : start + len(r.rows)])
                start += len(r.rows)


def make_handler(batcher: Batcher, features: int) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _reply(self, code: int, doc: dict[str, Any]) -> None:
            body = json.dumps(doc).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            if self.command == "POST":  # probes are not traffic
                REQUESTS.labels(code=str(code)).inc()

        def do_GET(self) -> None:
            if self.path in ("/healthz", "/readyz"):
                self._reply(200, {"status": "ok"})
            else:
                self._reply(404, {"error": f"no such path {self.path}; POST /v1/predict"})

        def do_POST(self) -> None:
            t0 = time.perf_counter()
            if self.path != "/v1/predict":
                self._reply(404, {"error": f"no such path {self.path}; POST /v1/predict"})
                return
            try:
                length = int(self.headers.get("Content-Length") or 0)
                rows = parse_inputs(self.rfile.read(length), features)
                logits = batcher.predict(rows)
            except BadRequest as err:
                self._reply(400, {"error": str(err)})
                return
            except Exception as err:
                self._reply(500, {"error": f"inference failed: {err}"})
                return
            self._reply(
                200,
                {
                    "predictions": logits.argmax(dim=1).tolist(),
                    "logits": logits.tolist(),
                },
            )
            REQUEST_SECONDS.observe(time.perf_counter() - t0)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # one line per request would drown the pod's log

    return Handler


def load_model(checkpoint_dir: str) -> nn.Module:
    from distml_runtime.train import checkpoint
    from distml_runtime.train.ddp import build_model

    model = build_model()
    latest = checkpoint.newest(Path(checkpoint_dir)) if checkpoint_dir else None
    if latest is not None:
        model.load_state_dict(checkpoint.load(latest)["model"])
        print(json.dumps({"event": "loaded", "path": str(latest)}), flush=True)
    return model


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m distml_runtime.serve",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--host", default="0.0.0.0")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--metrics-port", type=int, default=9400)
    ap.add_argument("--checkpoint-dir", default="")
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    batcher = Batcher(load_model(args.checkpoint_dir), args.max_batch, args.max_wait_ms / 1e3)
    if args.metrics_port:
        start_http_server(args.metrics_port)
    server = ThreadingHTTPServer((args.host, args.port), make_handler(batcher, DIGITS_FEATURES))
    print(json.dumps({"event": "serving", "port": server.server_address[1]}), flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
