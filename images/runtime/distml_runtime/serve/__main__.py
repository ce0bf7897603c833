"""`python -m distml_runtime.serve`: see distml_runtime.serve."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys

import torch
from prometheus_client import start_http_server

from distml_runtime import serve
from distml_runtime.serve import stages
from distml_runtime.serve.server import Config, load_layers


def _env(name: str, default: object) -> str:
    """A default from the pod's environment (the operator's contract), else the built-in one."""
    return os.environ.get(name, str(default))


def parser() -> argparse.ArgumentParser:
    d = Config()
    ap = argparse.ArgumentParser(
        prog="python -m distml_runtime.serve",
        description=serve.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--host", default="0.0.0.0")
    ap.add_argument("--port", type=int, default=int(_env("DISTML_SERVE_PORT", 8000)))
    ap.add_argument("--metrics-port", type=int, default=int(_env("DISTML_METRICS_PORT", 9400)),
                    help="0: no metrics")  # fmt: skip
    ap.add_argument("--model-name", default=_env("DISTML_MODEL_NAME", d.model_name))
    ap.add_argument("--model-version", default=_env("DISTML_MODEL_VERSION", d.model_version))
    ap.add_argument("--checkpoint-dir", default=_env("DISTML_CHECKPOINT_DIR", d.checkpoint_dir),
                    help="the newest step-*.pt there is served; empty: the demo model")  # fmt: skip
    ap.add_argument("--max-batch-size", type=int,
                    default=int(_env("DISTML_MAX_BATCH_SIZE", d.max_batch_size)),
                    help="rows per forward pass, and per request at most")  # fmt: skip
    ap.add_argument("--max-queue-delay-ms", type=float,
                    default=float(_env("DISTML_MAX_QUEUE_DELAY_MS", d.max_queue_delay * 1e3)),
                    help="how long a request waits for others to share its batch")  # fmt: skip
    ap.add_argument("--drain-seconds", type=float,
                    default=float(_env("DISTML_DRAIN_SECONDS", d.drain_seconds)),
                    help="after SIGTERM: not ready, still answering, this long")  # fmt: skip
    ap.add_argument("--max-request-bytes", type=int, default=d.max_request_bytes)
    ap.add_argument("--demo-hidden", type=int, default=d.demo_hidden,
                    help="width of the built-in model's hidden layers")  # fmt: skip
    ap.add_argument("--widths", default=_env("DISTML_MODEL_WIDTHS", ""),
                    help="hidden layers, e.g. 128,128 (empty: 2 x --demo-hidden)")  # fmt: skip
    ap.add_argument("--paced-layer-ms", type=float,
                    default=float(_env("DISTML_PACED_LAYER_MS", 0)),
                    help="benchmarks: each layer also waits this long per forward pass, as a "
                    "host thread waits on a GPU")  # fmt: skip
    ap.add_argument("--stuck-seconds", type=float, default=d.stuck_seconds,
                    help="a forward pass longer than this makes the server not ready")  # fmt: skip
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.max_batch_size < 1:
        parser().error("--max-batch-size must be at least 1")
    config = Config(
        model_name=args.model_name,
        model_version=args.model_version,
        checkpoint_dir=args.checkpoint_dir,
        max_batch_size=args.max_batch_size,
        max_queue_delay=args.max_queue_delay_ms / 1e3,
        drain_seconds=args.drain_seconds,
        max_request_bytes=args.max_request_bytes,
        stuck_seconds=args.stuck_seconds,
        demo_hidden=args.demo_hidden,
        widths=tuple(int(w) for w in args.widths.split(",") if w.strip()),
        stage=stages.StageConfig.from_env(),
        paced_layer_seconds=args.paced_layer_ms / 1e3,
    )
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if config.stage is not None and config.stage.stage > 0:
        return asyncio.run(_later_stage(config))  # no HTTP: it only computes
    if args.metrics_port:
        start_http_server(args.metrics_port)
    return asyncio.run(serve.server.serve(config, args.host, args.port))


async def _later_stage(config: Config) -> int:
    """A stage after the first: its layers, then frames in, frames on, until its neighbours go
    (or SIGTERM, when its replica is stopped)."""
    assert config.stage is not None
    layers, source = await load_layers(config)
    print(json.dumps({"event": "stage-loaded", "stage": config.stage.stage,
                      "layers": config.stage.layers, "model": source}), flush=True)  # fmt: skip
    work = asyncio.ensure_future(
        stages.run_stage(config.stage, stages.stage_module(layers, config.stage))
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait([work, stopping], return_when=asyncio.FIRST_COMPLETED)
    if work.done():
        return work.result()
    work.cancel()
    return 0


if __name__ == "__main__":
    sys.exit(main())
