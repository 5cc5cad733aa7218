"""V2 infer bodies: parsing (JSON and binary tensors), refusals naming the problem, encoding."""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kaon_kernels.serve.http11 import HttpError
from kaon_kernels.serve.protocol import (
    BatchResult,
    InferRequest,
    OutputRows,
    Signature,
    TensorSpec,
    encode_infer,
    parse_infer,
)

SIG = Signature(
    "digits",
    "1",
    TensorSpec("input", "FP32", (-1, 1, 2, 2)),
    (
        TensorSpec("logits", "FP32", (-1, 3)),
        TensorSpec("label", "INT64", (-1,)),
    ),
)


def body(inputs: list[dict[str, Any]] | None = None, **extra: Any) -> bytes:
    doc: dict[str, Any] = {"inputs": inputs if inputs is not None else [tensor()], **extra}
    return json.dumps(doc).encode()


def tensor(**fields: Any) -> dict[str, Any]:
    return {"name": "input", "shape": [1, 1, 2, 2], "datatype": "FP32", "data": [1, 2, 3, 4]} | (
        fields
    )


def refused(raw: bytes, header_length: int | None = None) -> str:
    with pytest.raises(HttpError) as caught:
        parse_infer(raw, header_length, SIG)
    assert caught.value.status == 400
    return caught.value.message


def test_json_data_flat_nested_or_with_a_flattened_shape() -> None:
    flat = parse_infer(body(), None, SIG)
    nested = parse_infer(
        body([tensor(shape=[2, 1, 2, 2], data=[[[[1, 2], [3, 4]]], [[[5, 6], [7, 8.5]]]])]),
        None,
        SIG,
    )
    flattened = parse_infer(body([tensor(shape=[1, 4])]), None, SIG)
    assert list(flat.values) == [1, 2, 3, 4] and flat.samples == 1
    assert list(nested.values) == [1, 2, 3, 4, 5, 6, 7, 8.5] and nested.samples == 2
    assert list(flattened.values) == [1, 2, 3, 4]


def test_the_id_is_echoed_or_generated_and_outputs_default_to_all_as_json() -> None:
    echoed = parse_infer(body(id="abc"), None, SIG)
    first, second = (parse_infer(body(), None, SIG) for _ in range(2))
    assert echoed.id == "abc"
    assert isinstance(first.id, str) and first.id and first.id != second.id
    assert echoed.outputs == (("logits", False), ("label", False))
    binary = parse_infer(body(parameters={"binary_data_output": True}), None, SIG)
    assert binary.outputs == (("logits", True), ("label", True))


def test_requested_outputs_in_their_order_with_their_own_binary_flag() -> None:
    req = parse_infer(
        body(
            outputs=[{"name": "label"}, {"name": "logits", "parameters": {"binary_data": True}}],
            parameters={"binary_data_output": False},
        ),
        None,
        SIG,
    )
    assert req.outputs == (("label", False), ("logits", True))


@pytest.mark.parametrize(
    ("datatype", "code"),
    [("FP32", "f"), ("FP64", "d"), ("FP16", "e"), ("UINT8", "B"), ("INT32", "i"), ("INT64", "q")],
)
def test_binary_inputs_of_any_number_type_become_fp32(datatype: str, code: str) -> None:
    raw = struct.pack(f"<4{code}", 1, 2, 3, 16)
    header = body([tensor(datatype=datatype, data=None, parameters={"binary_data_size": 4 * 0})])
    doc = json.loads(header)
    del doc["inputs"][0]["data"]
    doc["inputs"][0]["parameters"]["binary_data_size"] = len(raw)
    header = json.dumps(doc).encode()
    req = parse_infer(header + raw, len(header), SIG)
    assert list(req.values) == [1.0, 2.0, 3.0, 16.0]
    assert req.values.typecode == "f"


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (b"{", "malformed JSON"),
        (b"\xff\xfe\x00", "malformed JSON"),
        (b"[1]", "JSON object"),
        (b'{"inputs": [{"name": "input", "data": [NaN]}]}', "NaN"),
        (body([]), "'inputs'"),
        (body([tensor(), tensor()]), "takes 1 input"),
        (body([tensor(name="x")]), "unknown input 'x'"),
        (body([tensor(datatype="BYTES")]), "datatype BYTES not supported"),
        (body([tensor(datatype="BOOL")]), "datatype BOOL not supported"),
        (body([tensor(datatype="FP8")]), "unknown datatype 'FP8'"),
        (body([tensor(shape=[1, 2, 2])]), "does not match [-1, 1, 2, 2]"),
        (body([tensor(shape=[0, 1, 2, 2], data=[])]), "no samples"),
        (body([tensor(shape=[1, 1, 2, True])]), "non-negative integers"),
        (body([tensor(data=[1, 2, 3])]), "3 values in 'data' but the shape needs 4"),
        (body([tensor(data=[1, 2, 3, "4"])]), "only numbers, found '4'"),
        (body([tensor(data=[1, 2, 3, None])]), "only numbers"),
        (body([tensor(data=[1, 2, 3, 10**400])]), "only numbers"),
        (body([tensor(data="1234")]), "must be a list"),
        (body([{"name": "input", "shape": [1, 4], "datatype": "FP32"}]), "needs 'data'"),
        (body(id=7), "'id' must be a string"),
        (body(parameters=[]), "'parameters' must be an object"),
        (body(parameters={"binary_data_output": "yes"}), "binary_data_output"),
        (body(outputs=[{"name": "nope"}]), "unknown output 'nope'"),
        (body(outputs=[{"name": "label"}, {"name": "label"}]), "requested twice"),
        (body(outputs={"name": "label"}), "'outputs' must be a list"),
        (
            body(outputs=[{"name": "label", "parameters": {"classification": 2}}]),
            "classification",
        ),
    ],
)
def test_json_mistakes_are_refused_naming_the_problem(raw: bytes, words: str) -> None:
    assert words in refused(raw)


def test_json_that_the_fast_decoder_refuses_but_json_allows_is_still_served() -> None:
    # orjson refuses lone surrogate escapes; the standard decoder takes them, as the server
    # always has.
    raw = b'{"id": "a\\ud800b", "inputs": [{"name": "input", "shape": [1, 1, 2, 2], '
    raw += b'"datatype": "FP32", "data": [1, 2, 3, 18446744073709551616]}]}'
    req = parse_infer(raw, None, SIG)
    assert req.id == "a\ud800b"
    assert list(req.values) == [1.0, 2.0, 3.0, float(2**64)]


def test_binary_mistakes_are_refused_naming_the_problem() -> None:
    doc = json.loads(body([tensor(parameters={"binary_data_size": 16})]))
    del doc["inputs"][0]["data"]
    header = json.dumps(doc).encode()
    raw = struct.pack("<4f", 1, 2, 3, 4)
    assert "outside the body" in refused(header + raw, len(header) + 17)
    assert "16 but 12 bytes follow" in refused(header + raw[:12], len(header))
    both = body([tensor(parameters={"binary_data_size": 16})])
    assert "both 'data'" in refused(both + raw, len(both))
    assert "no input has binary_data_size" in refused(body() + raw, len(body()))
    doc["inputs"][0]["datatype"] = "FP64"
    header = json.dumps(doc).encode()
    assert "16 bytes of FP64 but the shape needs 32" in refused(header + raw, len(header))


def rows_of(logits: list[list[float]], labels: list[int]) -> BatchResult:
    return BatchResult(
        {
            "logits": OutputRows(
                logits, struct.pack(f"<{len(logits) * 3}f", *(v for row in logits for v in row)), 12
            ),
            "label": OutputRows(labels, struct.pack(f"<{len(labels)}q", *labels), 8),
        }
    )


def request(outputs: tuple[tuple[str, bool], ...], samples: int = 2) -> InferRequest:
    return InferRequest("r1", parse_infer(body(), None, SIG).values, samples, outputs)


def test_json_answer_joins_rows_from_several_batches() -> None:
    first = rows_of([[0.5, 1.0, 2.0], [3.0, 4.0, 5.0]], [2, 2])
    second = rows_of([[6.0, 7.0, 8.0]], [1])
    out, header_length = encode_infer(
        request((("logits", False), ("label", False))), [(first, 1, 2), (second, 0, 1)], SIG
    )
    assert header_length is None
    assert json.loads(out) == {
        "model_name": "digits",
        "model_version": "1",
        "id": "r1",
        "outputs": [
            {"name": "logits", "datatype": "FP32", "shape": [2, 3], "data": [3, 4, 5, 6, 7, 8]},
            {"name": "label", "datatype": "INT64", "shape": [2], "data": [2, 1]},
        ],
    }


def test_binary_answer_puts_raw_bytes_after_the_json_header() -> None:
    result = rows_of([[0.5, 1.0, 2.0], [3.0, 4.0, 5.0]], [2, 0])
    out, header_length = encode_infer(
        request((("label", True), ("logits", False))), [(result, 0, 2)], SIG
    )
    assert header_length is not None
    header = json.loads(out[:header_length])
    label, logits = header["outputs"]
    assert label["parameters"] == {"binary_data_size": 16} and "data" not in label
    assert struct.unpack("<2q", out[header_length:]) == (2, 0)
    assert logits["data"] == [0.5, 1.0, 2.0, 3.0, 4.0, 5.0]


def test_an_answer_for_non_finite_input_is_a_refusal() -> None:
    result = rows_of([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]], [0, 0])
    result.bad_rows = frozenset({1})
    with pytest.raises(HttpError, match="NaN or infinite"):
        encode_infer(request((("label", False),), 1), [(result, 1, 2)], SIG)
    encode_infer(request((("label", False),), 1), [(result, 0, 1)], SIG)  # its neighbour is fine


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)
fields = st.fixed_dictionaries(
    {},
    optional={
        "name": st.sampled_from(["input", "x"]) | json_values,
        "shape": st.lists(st.integers(-2, 5), max_size=5) | json_values,
        "datatype": st.sampled_from(["FP32", "INT8", "BYTES", "X"]) | json_values,
        "data": st.lists(st.integers(0, 16) | st.floats(), max_size=8) | json_values,
        "parameters": st.fixed_dictionaries({"binary_data_size": st.integers(-1, 20)})
        | json_values,
    },
)


@settings(max_examples=300, deadline=None)
@given(
    doc=st.fixed_dictionaries(
        {},
        optional={
            "id": json_values,
            "inputs": st.lists(fields, max_size=2) | json_values,
            "outputs": st.lists(
                st.fixed_dictionaries({"name": st.sampled_from(["label", "logits", "zz"])}),
                max_size=3,
            )
            | json_values,
            "parameters": json_values,
        },
    ),
    tail=st.binary(max_size=20),
    header_length=st.none() | st.integers(-5, 400),
)
def test_any_body_parses_or_is_refused_with_400(
    doc: dict[str, Any], tail: bytes, header_length: int | None
) -> None:
    raw = json.dumps(doc).encode() + tail
    try:
        req = parse_infer(raw, header_length, SIG)
    except HttpError as err:
        assert err.status == 400 and err.message
    else:
        assert len(req.values) == req.samples * 4 and req.samples >= 1
