"""The Open Inference Protocol (KServe v2, what Triton, KServe and Seldon speak) over REST: the
request and response documents, and their binary tensor extension. Pure: bytes and dicts in,
tensors and dicts out; every refusal says which field is wrong and why."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

# Datatypes of the protocol, as NumPy reads them (little-endian, as the binary extension sends).
DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype("bool"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "UINT8": np.dtype("<u1"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
HEADER_LENGTH = "Inference-Header-Content-Length"


class ProtocolError(ValueError):
    """A request the protocol or the model refuses: answered 400 with this message."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1: any size (the batch dimension)

    def doc(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    inputs: dict[str, np.ndarray]
    outputs: tuple[str, ...]  # asked for by name; empty: all
    binary_outputs: frozenset[str]  # to send back as raw bytes (the binary extension)


def _field(doc: Any, key: str, where: str) -> Any:
    if not isinstance(doc, dict) or key not in doc:
        raise ProtocolError(f"{where}: missing '{key}'")
    return doc[key]


def parse_request(
    body: bytes, header_length: str | None, inputs: dict[str, TensorSpec], outputs: list[str]
) -> InferRequest:
    """An inference request: its JSON part (all of the body, or its first
    Inference-Header-Content-Length bytes, then the binary tensors in order of the inputs that
    name a binary_data_size), checked against the model's inputs and outputs."""
    try:
        split = int(header_length) if header_length is not None else len(body)
    except ValueError:
        raise ProtocolError(f"{HEADER_LENGTH} must be a number, got {header_length!r}") from None
    if not 0 <= split <= len(body):
        raise ProtocolError(f"{HEADER_LENGTH} {split} is outside the body of {len(body)} bytes")
    try:
        doc = json.loads(body[:split] or b"null")
    except (ValueError, UnicodeDecodeError) as err:
        raise ProtocolError(f"the request is not JSON: {err}") from None
    if not isinstance(doc, dict):
        raise ProtocolError("the request must be a JSON object with 'inputs'")
    given = _field(doc, "inputs", "request")
    if not isinstance(given, list) or not given:
        raise ProtocolError("request: 'inputs' must be a non-empty list")
    binary = memoryview(body)[split:]
    tensors: dict[str, np.ndarray] = {}
    for i, item in enumerate(given):
        where = f"inputs[{i}]"
        name = _field(item, "name", where)
        spec = inputs.get(name)
        if spec is None:
            raise ProtocolError(f"{where}: the model has no input {name!r} (it takes "
                                f"{', '.join(sorted(inputs))})")  # fmt: skip
        if name in tensors:
            raise ProtocolError(f"{where}: input {name!r} given twice")
        tensors[name], binary = _tensor(item, spec, where, binary)
    if len(binary):
        raise ProtocolError(f"{len(binary)} bytes of binary data that no input claims")
    missing = sorted(set(inputs) - set(tensors))
    if missing:
        raise ProtocolError(f"request: missing input {', '.join(map(repr, missing))}")
    wanted, binary_out = [], set()
    for i, item in enumerate(doc.get("outputs") or []):
        name = _field(item, "name", f"outputs[{i}]")
        if name not in outputs:
            raise ProtocolError(f"outputs[{i}]: the model has no output {name!r} (it gives "
                                f"{', '.join(outputs)})")  # fmt: skip
        wanted.append(name)
        if (item.get("parameters") or {}).get("binary_data"):
            binary_out.add(name)
    if (doc.get("parameters") or {}).get("binary_data_output"):
        binary_out |= set(wanted or outputs)
    rid = doc.get("id")
    return InferRequest(str(rid) if rid is not None else None, tensors, tuple(wanted),
                        frozenset(binary_out))  # fmt: skip


def _tensor(
    item: dict[str, Any], spec: TensorSpec, where: str, binary: memoryview
) -> tuple[np.ndarray, memoryview]:
    datatype = _field(item, "datatype", where)
    if datatype != spec.datatype:
        raise ProtocolError(f"{where}: input {spec.name!r} is {spec.datatype}, not {datatype}")
    shape = _field(item, "shape", where)
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise ProtocolError(f"{where}: 'shape' must be a list of sizes, got {shape!r}")
    if len(shape) != len(spec.shape) or any(
        want not in (-1, got) for want, got in zip(spec.shape, shape, strict=True)
    ):
        raise ProtocolError(f"{where}: input {spec.name!r} has shape {list(spec.shape)} "
                            f"(-1: any), got {shape}")  # fmt: skip
    dtype = DTYPES[datatype]
    count = int(np.prod(shape))
    size = (item.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        if size != count * dtype.itemsize or size > len(binary):
            raise ProtocolError(f"{where}: binary_data_size {size} does not hold {shape} of "
                                f"{datatype} ({count * dtype.itemsize} bytes)")  # fmt: skip
        array = np.frombuffer(binary[:size], dtype=dtype).reshape(shape)
        return array, binary[size:]
    data = _field(item, "data", where)
    try:
        array = np.asarray(data, dtype=dtype)
    except (ValueError, TypeError):
        raise ProtocolError(f"{where}: 'data' holds something that is not {datatype}") from None
    if array.size != count:
        raise ProtocolError(f"{where}: 'data' holds {array.size} values, shape {shape} needs "
                            f"{count}")  # fmt: skip
    return array.reshape(shape), binary


def encode_response(
    model: str, version: str, request: InferRequest, outputs: dict[str, tuple[str, np.ndarray]]
) -> tuple[bytes, dict[str, str]]:
    """The response body and its extra headers: `outputs` maps a name to (datatype, array);
    those asked for as binary follow the JSON part as raw bytes."""
    names = request.outputs or tuple(outputs)
    docs, blobs = [], []
    for name in names:
        datatype, array = outputs[name]
        doc: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if name in request.binary_outputs:
            raw = np.ascontiguousarray(array, dtype=DTYPES[datatype]).tobytes()
            doc["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            doc["data"] = array.reshape(-1).tolist()
        docs.append(doc)
    head: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": docs}
    if request.id is not None:
        head["id"] = request.id
    text = json.dumps(head).encode()
    if not blobs:
        return text, {}
    return text + b"".join(blobs), {HEADER_LENGTH: str(len(text))}
