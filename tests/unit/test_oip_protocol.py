"""The Open Inference Protocol's documents, both encodings, and what they refuse."""

from __future__ import annotations

import json

import numpy as np
import pytest

from distml_runtime.serve.protocol import (
    HEADER_LENGTH,
    ProtocolError,
    TensorSpec,
    encode_response,
    parse_request,
)

INPUTS = {"input": TensorSpec("input", "FP32", (-1, 4))}
OUTPUTS = ["logits", "label"]


def _binary(array: np.ndarray, **doc) -> tuple[bytes, str]:
    raw = array.astype("<f4").tobytes()
    head = {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(array.shape),
                        "parameters": {"binary_data_size": len(raw)}}], **doc}  # fmt: skip
    text = json.dumps(head).encode()
    return text + raw, str(len(text))


def test_json_and_binary_inputs_read_the_same():
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    as_json = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 4],
                                      "data": x.tolist()}]}).encode()  # fmt: skip
    a = parse_request(as_json, None, INPUTS, OUTPUTS)
    b = parse_request(*_binary(x), INPUTS, OUTPUTS)
    np.testing.assert_array_equal(a.inputs["input"], x)
    np.testing.assert_array_equal(b.inputs["input"], x)


@pytest.mark.parametrize(
    ("body", "header", "message"),
    [
        (b"{}", "7", "is outside the body of 2 bytes"),
        (b"{}", "x", "must be a number"),
        (b"not json", None, "the request is not JSON"),
        (b"[]", None, "must be a JSON object"),
    ],
)
def test_the_frame_is_checked(body, header, message):
    with pytest.raises(ProtocolError, match=message.replace("(", r"\(")):
        parse_request(body, header, INPUTS, OUTPUTS)


def test_binary_sizes_must_match_the_shape_and_every_byte_be_claimed():
    x = np.zeros((2, 4), dtype=np.float32)
    body, header = _binary(x)
    with pytest.raises(ProtocolError, match="bytes of binary data that no input claims"):
        parse_request(body + b"\0\0\0\0", header, INPUTS, OUTPUTS)
    doc = json.loads(body[: int(header)])
    doc["inputs"][0]["parameters"]["binary_data_size"] = 12
    text = json.dumps(doc).encode()
    with pytest.raises(ProtocolError, match="binary_data_size 12 does not hold"):
        parse_request(text + body[int(header) :], str(len(text)), INPUTS, OUTPUTS)


def test_outputs_come_back_in_the_encoding_asked_for():
    x = np.ones((1, 4), dtype=np.float32)
    asked = {"outputs": [{"name": "logits", "parameters": {"binary_data": True}},
                         {"name": "label"}], "id": "r1"}  # fmt: skip
    request = parse_request(*_binary(x, **asked), INPUTS, OUTPUTS)
    logits = np.array([[0.5, -1.0]], dtype=np.float32)
    outputs = {"logits": ("FP32", logits), "label": ("INT64", np.array([0]))}
    body, headers = encode_response("m", "1", request, outputs)
    split = int(headers[HEADER_LENGTH])
    head = json.loads(body[:split])
    assert head["id"] == "r1" and [o["name"] for o in head["outputs"]] == ["logits", "label"]
    assert head["outputs"][0]["parameters"]["binary_data_size"] == 8
    np.testing.assert_array_equal(np.frombuffer(body[split:], "<f4").reshape(1, 2), logits)
    assert head["outputs"][1]["data"] == [0]
    plain = parse_request(json.dumps({"inputs": [{"name": "input", "datatype": "FP32",
                                                  "shape": [1, 4], "data": [1] * 4}]}).encode(),
                          None, INPUTS, OUTPUTS)  # fmt: skip
    body, headers = encode_response("m", "1", plain, outputs)
    assert headers == {} and json.loads(body)["outputs"][0]["data"] == [0.5, -1.0]
