"""Open Inference Protocol (V2) infer requests and responses, as pure functions.

Requests: JSON tensors (`data` flat or nested, row-major; the count must equal the product of
`shape`) or the binary tensor extension (the body holds an `Inference-Header-Content-Length`-byte
JSON header, then each input's raw little-endian bytes, sized by `parameters.binary_data_size`).
Any numeric datatype is accepted and converted to FP32; BOOL and BYTES are refused. The input's
shape is `[n, *sample_shape]` or, flattened, `[n, prod(sample_shape)]`.

Responses: every output as JSON `data` (flat, row-major), or as raw bytes after the JSON header
when the output asks `parameters.binary_data` or the request `parameters.binary_data_output`.

Every client mistake raises `HttpError(400, message)` naming the field and the problem.
Nothing here imports torch: the model hands back plain lists and bytes per batch.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import struct
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from kaon_kernels.serve.http11 import HttpError

# V2 datatype -> (struct/array type code, bytes per element), for the accepted numeric types.
NUMERIC: dict[str, tuple[str, int]] = {
    "UINT8": ("B", 1),
    "UINT16": ("H", 2),
    "UINT32": ("I", 4),
    "UINT64": ("Q", 8),
    "INT8": ("b", 1),
    "INT16": ("h", 2),
    "INT32": ("i", 4),
    "INT64": ("q", 8),
    "FP16": ("e", 2),
    "FP32": ("f", 4),
    "FP64": ("d", 8),
}
REFUSED = ("BOOL", "BYTES")
_LITTLE = struct.pack("=H", 1) == struct.pack("<H", 1)


@dataclass(frozen=True, slots=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1 for the batch dimension

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class Signature:
    """What the served model takes and gives."""

    model_name: str
    version: str
    input: TensorSpec
    outputs: tuple[TensorSpec, ...]
    by_name: dict[str, TensorSpec] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_name", {o.name: o for o in self.outputs})

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self.input.shape[1:]

    @property
    def sample_size(self) -> int:
        return math.prod(self.sample_shape)

    def output(self, name: str) -> TensorSpec | None:
        return self.by_name.get(name)


@dataclass(slots=True)
class InferRequest:
    id: str
    values: array[float]  # FP32, samples * sample_size values, row-major
    samples: int
    outputs: tuple[tuple[str, bool], ...]  # (name, as binary) in the order to answer


@dataclass(slots=True)
class OutputRows:
    """One output of one batch: a JSON value per sample and all samples as raw bytes."""

    rows: list[Any]  # per sample: a list of numbers, or one number for a [n] output
    raw: bytes
    row_bytes: int


@dataclass(slots=True)
class BatchResult:
    outputs: dict[str, OutputRows]
    bad_rows: frozenset[int] = frozenset()  # samples whose input was not finite


class _ConstantError(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    raise _ConstantError(name)


# Made once: json.loads and json.dumps build a decoder or encoder per call when given options.
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)


_ids = itertools.count(1)
_id_prefix = os.urandom(4).hex()


def new_id() -> str:
    return f"{_id_prefix}-{next(_ids)}"


def parse_infer(body: bytes, header_length: int | None, sig: Signature) -> InferRequest:
    """An infer request's body (and its JSON header length, if binary) as checked values."""
    if header_length is None:
        header, raw = body, b""
    else:
        if not 0 <= header_length <= len(body):
            raise HttpError(
                400,
                f"Inference-Header-Content-Length {header_length} is outside the "
                f"body's {len(body)} bytes",
            )
        header, raw = body[:header_length], body[header_length:]
    doc = _load_json(header)
    if not isinstance(doc, dict):
        raise HttpError(400, "request body must be a JSON object")
    request_id = doc.get("id")
    if request_id is None:
        request_id = new_id()
    elif not isinstance(request_id, str):
        raise HttpError(400, "'id' must be a string")
    params = _params(doc, "request")
    binary_default = params.get("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise HttpError(400, "request parameters.binary_data_output must be a boolean")
    values, samples = _parse_inputs(doc.get("inputs"), raw, sig)
    outputs = _parse_outputs(doc.get("outputs"), binary_default, sig)
    return InferRequest(request_id, values, samples, outputs)


def _load_json(header: bytes) -> Any:
    try:
        return orjson.loads(header)
    except orjson.JSONDecodeError:
        # The standard decoder names what is wrong, and takes the JSON that orjson refuses
        # (lone surrogate escapes, numbers past its range): such requests are served as before.
        pass
    try:
        return _DECODER.decode(header.decode())
    except _ConstantError as err:
        raise HttpError(400, f"malformed JSON: {err} is not a number JSON allows") from None
    except (ValueError, RecursionError) as err:  # JSONDecodeError, UnicodeDecodeError
        raise HttpError(400, f"malformed JSON: {err}") from None


def _params(obj: dict[str, Any], where: str) -> dict[str, Any]:
    params = obj.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise HttpError(400, f"{where} 'parameters' must be an object")
    return params


def _parse_inputs(inputs: Any, raw: bytes, sig: Signature) -> tuple[array[float], int]:
    if not isinstance(inputs, list) or not inputs:
        raise HttpError(400, "request needs 'inputs', a non-empty list")
    if len(inputs) != 1:
        raise HttpError(
            400, f"model '{sig.model_name}' takes 1 input ('{sig.input.name}'), got {len(inputs)}"
        )
    tensor = inputs[0]
    if not isinstance(tensor, dict):
        raise HttpError(400, "inputs[0] must be an object")
    name = tensor.get("name")
    if name != sig.input.name:
        raise HttpError(
            400, f"unknown input {name!r}: model '{sig.model_name}' takes '{sig.input.name}'"
        )
    where = f"input '{sig.input.name}'"
    datatype = tensor.get("datatype")
    if not isinstance(datatype, str) or datatype not in NUMERIC:
        if datatype in REFUSED:
            raise HttpError(
                400, f"{where}: datatype {datatype} not supported; send FP32 or another number type"
            )
        raise HttpError(400, f"{where}: unknown datatype {datatype!r}")
    samples = _check_shape(tensor.get("shape"), sig, where)
    count = samples * sig.sample_size
    params = _params(tensor, where)
    size = params.get("binary_data_size")
    if size is not None:
        if "data" in tensor:
            raise HttpError(400, f"{where}: both 'data' and parameters.binary_data_size given")
        return _from_binary(raw, size, datatype, count, where), samples
    if raw:
        raise HttpError(
            400, f"{len(raw)} bytes follow the JSON header but no input has binary_data_size"
        )
    if "data" not in tensor:
        raise HttpError(400, f"{where}: needs 'data' or parameters.binary_data_size")
    return _from_json(tensor["data"], count, where), samples


def _check_shape(shape: Any, sig: Signature, where: str) -> int:
    if (
        not isinstance(shape, list)
        or not shape
        or not all(type(d) is int and d >= 0 for d in shape)
    ):
        raise HttpError(400, f"{where}: 'shape' must be a non-empty list of non-negative integers")
    expected = [-1, *sig.sample_shape]
    if tuple(shape[1:]) != sig.sample_shape and shape[1:] != [sig.sample_size]:
        raise HttpError(400, f"{where}: shape {shape} does not match {expected} (n samples)")
    if shape[0] < 1:
        raise HttpError(400, f"{where}: shape {shape} holds no samples")
    return int(shape[0])


def _from_binary(raw: bytes, size: Any, datatype: str, count: int, where: str) -> array[float]:
    if type(size) is not int or size < 0:
        raise HttpError(400, f"{where}: binary_data_size must be a non-negative integer")
    if size != len(raw):
        raise HttpError(
            400, f"{where}: binary_data_size is {size} but {len(raw)} bytes follow the JSON header"
        )
    code, itemsize = NUMERIC[datatype]
    if size != count * itemsize:
        raise HttpError(
            400, f"{where}: {size} bytes of {datatype} but the shape needs {count * itemsize}"
        )
    if code == "f" and _LITTLE:
        values = array("f")
        values.frombytes(raw)
        return values
    return array("f", struct.unpack(f"<{count}{code}", raw))


def _from_json(data: Any, count: int, where: str) -> array[float]:
    if not isinstance(data, list):
        raise HttpError(400, f"{where}: 'data' must be a list of numbers")
    if data and isinstance(data[0], list):
        data = _flatten(data, where)
    if len(data) != count:
        raise HttpError(400, f"{where}: {len(data)} values in 'data' but the shape needs {count}")
    try:
        return array("f", data)
    except (TypeError, OverflowError):
        bad = next((v for v in data if type(v) not in (int, float)), None)
        raise HttpError(400, f"{where}: 'data' must hold only numbers, found {bad!r:.40}") from None


def _flatten(data: list[Any], where: str) -> list[Any]:
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for value in stack[-1]:
            if isinstance(value, list):
                if len(stack) > 32:
                    raise HttpError(400, f"{where}: 'data' nested too deeply")
                stack.append(iter(value))
                break
            flat.append(value)
        else:
            stack.pop()
    return flat


def _parse_outputs(
    outputs: Any, binary_default: bool, sig: Signature
) -> tuple[tuple[str, bool], ...]:
    if outputs is None or outputs == []:
        return tuple((o.name, binary_default) for o in sig.outputs)
    if not isinstance(outputs, list):
        raise HttpError(400, "'outputs' must be a list")
    chosen: list[tuple[str, bool]] = []
    for wanted in outputs:
        if not isinstance(wanted, dict) or not isinstance(wanted.get("name"), str):
            raise HttpError(400, "every entry of 'outputs' must be an object with a 'name'")
        name = wanted["name"]
        if sig.output(name) is None:
            known = ", ".join(o.name for o in sig.outputs)
            raise HttpError(400, f"unknown output {name!r}: model '{sig.model_name}' gives {known}")
        if any(name == n for n, _ in chosen):
            raise HttpError(400, f"output '{name}' requested twice")
        params = _params(wanted, f"output '{name}'")
        if params.get("classification"):
            raise HttpError(400, f"output '{name}': the classification extension is not supported")
        binary = params.get("binary_data", binary_default)
        if not isinstance(binary, bool):
            raise HttpError(400, f"output '{name}': parameters.binary_data must be a boolean")
        chosen.append((name, binary))
    return tuple(chosen)


def encode_infer(
    request: InferRequest, parts: Sequence[tuple[BatchResult, int, int]], sig: Signature
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary outputs follow it."""
    for result, start, stop in parts:
        if result.bad_rows and any(start <= r < stop for r in result.bad_rows):
            raise HttpError(400, f"input '{sig.input.name}' holds NaN or infinite FP32 values")
    tensors: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    n = request.samples
    for name, binary in request.outputs:
        spec = sig.output(name)
        assert spec is not None  # checked by parse_infer
        shape = [n, *spec.shape[1:]]
        if binary:
            blob = b"".join(
                r.outputs[name].raw[a * r.outputs[name].row_bytes : b * r.outputs[name].row_bytes]
                for r, a, b in parts
            )
            blobs.append(blob)
            tensors.append(
                {
                    "name": name,
                    "datatype": spec.datatype,
                    "shape": shape,
                    "parameters": {"binary_data_size": len(blob)},
                }
            )
        else:
            tensors.append(
                {
                    "name": name,
                    "datatype": spec.datatype,
                    "shape": shape,
                    "data": _rows(name, parts),
                }
            )
    doc = {
        "model_name": sig.model_name,
        "model_version": sig.version,
        "id": request.id,
        "outputs": tensors,
    }
    header = orjson.dumps(doc)
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)


def _rows(name: str, parts: Sequence[tuple[BatchResult, int, int]]) -> list[Any]:
    if len(parts) == 1:
        result, a, b = parts[0]
        rows = result.outputs[name].rows[a:b]
    else:
        rows = [row for r, a, b in parts for row in r.outputs[name].rows[a:b]]
    if rows and isinstance(rows[0], list):
        return rows[0] if len(rows) == 1 else [v for row in rows for v in row]
    return rows
