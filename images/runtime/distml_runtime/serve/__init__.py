"""The serving server: the Open Inference Protocol (KServe v2) with dynamic batching.

    python -m distml_runtime.serve --port 8000 --checkpoint-dir /ckpt --max-batch-size 32 \\
        --max-queue-delay-ms 5

Any OIP client talks to it (tritonclient, KServe's): `GET /v2/health/ready`, `GET
/v2/models/digits`, `POST /v2/models/digits/infer` with an FP32 input `input` of shape [N, 64]
(JSON or the binary tensor extension); the answer holds `logits` [N, 10] and `label` [N]. The
model is the digits MLP of `train.ddp`, from the newest checkpoint in --checkpoint-dir (waited
for when there is none yet), or the built-in demo model without one.
"""
