"""Open Inference Protocol v2 infer requests: parse, check against the model's bundle, encode answers.

Every problem is an :class:`~bastion.serving.http.HttpError` naming the field (400), the
media type (415) or the size (413); nothing a client sends reaches the model unchecked:

- the body is JSON (or Triton's binary tensor extension: a JSON header of
  ``Inference-Header-Content-Length`` bytes followed by raw little-endian tensors);
- exactly one input, named as the model's metadata says (``input``), datatype FP32 or
  UINT8, shape ``[N, *input_shape]`` with N rows, at most ``max_elements`` values;
- FP32 values finite and inside the bundle's bounds (unless the bundle's sanitiser clamps
  out-of-range values itself); UINT8 values integers 0-255, scaled into the bounds;
- requested outputs among ``logits``, ``class`` (and, with a detector, ``detector_score``
  and ``flagged``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bastion.serving.http import HttpError, dumps

INPUT_NAME = "input"
DATATYPES = ("FP32", "UINT8")
BASE_OUTPUTS = ("logits", "class")
DETECTOR_OUTPUTS = ("detector_score", "flagged")
REQUEST_KEYS = {"id", "inputs", "outputs", "parameters"}
TENSOR_KEYS = {"name", "shape", "datatype", "data", "parameters"}
MAX_ID_CHARS = 256
MAX_PARAMETERS = 64
BINARY_HEADER = "inference-header-content-length"
_OUTPUT_TYPES = {"logits": ("FP32", "<f4"), "class": ("INT64", "<i8"), "detector_score": ("FP32", "<f4"),
                 "flagged": ("BOOL", "|b1")}


@dataclass(frozen=True)
class TensorSpec:
    """What the model takes, from its verified ``bastion.toml``."""

    input_shape: tuple[int, ...]
    num_classes: int
    bounds: tuple[float, float] = (0.0, 1.0)
    clamps_out_of_range: bool = False  # the bundle's sanitiser clamps values outside the bounds itself
    max_rows: int = 1024
    max_elements: int = 4 * 1024 * 1024
    detector: bool = False

    @property
    def outputs(self) -> tuple[str, ...]:
        return BASE_OUTPUTS + (DETECTOR_OUTPUTS if self.detector else ())

    def metadata(self) -> dict[str, Any]:
        """The OIP metadata's ``inputs`` and ``outputs`` (-1: any batch size)."""
        outputs = [{"name": "logits", "datatype": "FP32", "shape": [-1, self.num_classes]},
                   {"name": "class", "datatype": "INT64", "shape": [-1]}]
        if self.detector:
            outputs += [{"name": "detector_score", "datatype": "FP32", "shape": [-1]},
                        {"name": "flagged", "datatype": "BOOL", "shape": [-1]}]
        return {"inputs": [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, *self.input_shape],
                            "parameters": {"accepts": "FP32 or UINT8", "bounds": f"{self.bounds[0]:g},{self.bounds[1]:g}"}}],
                "outputs": outputs}


@dataclass
class InferRequest:
    x: np.ndarray  # float32, (N, *input_shape), inside the bounds
    id: str | None
    outputs: tuple[str, ...]  # requested, in order; empty: the defaults
    binary_outputs: set[str] = field(default_factory=set)

    @property
    def rows(self) -> int:
        return int(self.x.shape[0])


def check_media_type(content_type: str | None, binary: bool) -> None:
    """415 unless the body is JSON (or, with the binary extension, octet-stream).

    A missing Content-Type is read as JSON: tritonclient sends none. A form type (what
    ``curl -d`` sends without ``-H 'Content-Type: application/json'``) is refused.
    """
    if content_type is None or not content_type.strip():
        return
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "application/json" or media.endswith("+json") or (binary and media == "application/octet-stream"):
        return
    raise HttpError(415, f"unsupported media type {media[:80]!r}: send application/json (curl: -H "
                         "'Content-Type: application/json'), or the binary tensor extension as "
                         "application/octet-stream")


def _reject_constant(name: str):
    raise ValueError(f"{name} is not JSON (numbers must be finite)")


def parse_infer_request(body: bytes, header_length: str | None, spec: TensorSpec) -> InferRequest:
    """Parse and check an infer request body (already size-capped) against ``spec``."""
    json_part, binary = _split_binary(body, header_length)
    try:
        doc = json.loads(json_part, parse_constant=_reject_constant)
    except RecursionError:
        raise HttpError(400, "request body: JSON nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise HttpError(400, f"request body: not valid JSON ({_short(exc)})") from None
    if not isinstance(doc, dict):
        raise HttpError(400, "request body: expected a JSON object with 'inputs'")
    unknown = sorted(set(doc) - REQUEST_KEYS)
    if unknown:
        raise HttpError(400, f"{unknown[0][:60]}: unknown field (an infer request has id, inputs, outputs, "
                             "parameters)")
    request_id = doc.get("id")
    if request_id is not None and (not isinstance(request_id, str) or len(request_id) > MAX_ID_CHARS):
        raise HttpError(400, f"id: expected a string of at most {MAX_ID_CHARS} characters")
    parameters = _parameters(doc.get("parameters"), "parameters")
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1:
        count = len(inputs) if isinstance(inputs, list) else "no"
        raise HttpError(400, f"inputs: the model takes exactly one input tensor, {INPUT_NAME!r} "
                             f"(got {count} tensors)")
    x = _input_tensor(inputs[0], "inputs[0]", spec, binary)
    outputs, binary_outputs = _requested_outputs(doc.get("outputs"), spec, parameters)
    return InferRequest(x, request_id, outputs, binary_outputs)


def _split_binary(body: bytes, header_length: str | None) -> tuple[bytes, memoryview | None]:
    if header_length is None:
        return body, None
    text = header_length.strip()
    if not text.isdigit() or len(text) > 12 or int(text) > len(body):
        raise HttpError(400, f"Inference-Header-Content-Length: {text[:20]!r} is not a length within the "
                             f"{len(body)}-byte body")
    length = int(text)
    return body[:length], memoryview(body)[length:]


def _parameters(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > MAX_PARAMETERS:
        raise HttpError(400, f"{where}: expected an object of at most {MAX_PARAMETERS} parameters")
    return value


def _input_tensor(tensor: Any, where: str, spec: TensorSpec, binary: memoryview | None) -> np.ndarray:
    if not isinstance(tensor, dict):
        raise HttpError(400, f"{where}: expected an object with name, shape, datatype and data")
    unknown = sorted(set(tensor) - TENSOR_KEYS)
    if unknown:
        raise HttpError(400, f"{where}.{unknown[0][:60]}: unknown field")
    name = tensor.get("name")
    if name != INPUT_NAME:
        raise HttpError(400, f"{where}.name: expected {INPUT_NAME!r}, got {_show(name)}")
    datatype = tensor.get("datatype")
    if datatype not in DATATYPES:
        raise HttpError(400, f"{where}.datatype: expected FP32 or UINT8, got {_show(datatype)}")
    shape = _shape(tensor.get("shape"), f"{where}.shape", spec)
    count = math.prod(shape)
    parameters = _parameters(tensor.get("parameters"), f"{where}.parameters")
    if "binary_data_size" in parameters:
        values = _binary_values(parameters["binary_data_size"], datatype, count, where, binary, "data" in tensor)
    else:
        values = _json_values(tensor.get("data"), datatype, shape, count, where)
    if datatype == "UINT8":
        if values.min(initial=0) < 0 or values.max(initial=0) > 255:
            raise HttpError(400, f"{where}.data: UINT8 values must be 0 to 255")
        lo, hi = spec.bounds
        array = values.astype(np.float32) * np.float32((hi - lo) / 255.0) + np.float32(lo)
    else:
        with np.errstate(over="ignore"):  # a value beyond FP32 becomes inf, refused just below
            array = values.astype(np.float32, copy=False)
        finite = np.isfinite(array)
        if not finite.all():
            raise HttpError(400, f"{where}.data: {int((~finite).sum())} value(s) are NaN or infinite "
                                 "(or overflow FP32)")
        lo, hi = spec.bounds
        if not spec.clamps_out_of_range and (array.min() < lo or array.max() > hi):
            raise HttpError(400, f"{where}.data: values span [{array.min():.4g}, {array.max():.4g}], outside "
                                 f"the model's bounds [{lo:g}, {hi:g}]")
    array = np.ascontiguousarray(array.reshape(shape))
    return array if array.flags.writeable else array.copy()  # binary data is a view of the body


def _shape(value: Any, where: str, spec: TensorSpec) -> list[int]:
    expected = f"[N, {', '.join(str(d) for d in spec.input_shape)}]"
    if (not isinstance(value, list) or len(value) != len(spec.input_shape) + 1
            or not all(type(d) is int for d in value)):
        raise HttpError(400, f"{where}: expected {expected} (N rows of the model's input shape), got {_show(value)}")
    if list(value[1:]) != list(spec.input_shape):
        raise HttpError(400, f"{where}: expected {expected}, got {_show(value)}")
    if not 1 <= value[0] <= spec.max_rows:
        raise HttpError(400, f"{where}: N must be 1 to {spec.max_rows} rows, got {value[0]}")
    if math.prod(value) > spec.max_elements:
        raise HttpError(400, f"{where}: {math.prod(value)} values exceed the limit of {spec.max_elements}")
    return value


def _json_values(data: Any, datatype: str, shape: list[int], count: int, where: str) -> np.ndarray:
    if not isinstance(data, list):
        raise HttpError(400, f"{where}.data: expected a list of {count} numbers (flat, or nested as the shape)")
    try:
        values = np.asarray(data)
    except (ValueError, TypeError, OverflowError):
        raise HttpError(400, f"{where}.data: not a list of numbers shaped {shape} (ragged or mixed)") from None
    kind = values.dtype.kind
    if kind not in "iuf" or (datatype == "UINT8" and kind == "f"):
        wanted = "integers" if datatype == "UINT8" else "numbers"
        raise HttpError(400, f"{where}.data: {datatype} data must be {wanted}, got {_kind_name(kind)}")
    if values.size != count or values.shape not in ((count,), tuple(shape)):
        raise HttpError(400, f"{where}.data: holds {values.size} values shaped {list(values.shape)}; shape "
                             f"{shape} needs {count}, flat or nested as the shape")
    return values


def _binary_values(size: Any, datatype: str, count: int, where: str, binary: memoryview | None,
                   has_data: bool) -> np.ndarray:
    if binary is None:
        raise HttpError(400, f"{where}.parameters.binary_data_size: binary data needs the "
                             "Inference-Header-Content-Length header")
    if has_data:
        raise HttpError(400, f"{where}: give data or parameters.binary_data_size, not both")
    item = 4 if datatype == "FP32" else 1
    if type(size) is not int or size != count * item or size != len(binary):
        raise HttpError(400, f"{where}.parameters.binary_data_size: {count} {datatype} values are "
                             f"{count * item} bytes; got binary_data_size {_show(size)} and {len(binary)} bytes")
    return np.frombuffer(binary, dtype="<f4" if datatype == "FP32" else np.uint8)


def _requested_outputs(value: Any, spec: TensorSpec, parameters: dict) -> tuple[tuple[str, ...], set[str]]:
    binary_all = parameters.get("binary_data_output") is True
    if value is None:
        names = BASE_OUTPUTS + (DETECTOR_OUTPUTS if spec.detector else ())
        return (), set(names) if binary_all else set()
    if not isinstance(value, list) or not value or len(value) > len(spec.outputs):
        raise HttpError(400, f"outputs: expected a list of 1 to {len(spec.outputs)} outputs "
                             f"({', '.join(spec.outputs)})")
    names, binary = [], set()
    for i, entry in enumerate(value):
        name = entry.get("name") if isinstance(entry, dict) else None
        if name not in spec.outputs or name in names:
            raise HttpError(400, f"outputs[{i}].name: expected one of {', '.join(spec.outputs)} (each once), "
                                 f"got {_show(name)}")
        extra = _parameters(entry.get("parameters"), f"outputs[{i}].parameters")
        if extra.get("binary_data", binary_all) is True:
            binary.add(name)
        names.append(name)
    return tuple(names), binary


def encode_response(*, model: str, version: str, request: InferRequest, tensors: dict[str, np.ndarray],
                    spec: TensorSpec, parameters: dict[str, Any] | None = None) -> tuple[bytes, dict[str, str]]:
    """The OIP response body (JSON, or JSON + binary outputs) and the headers it needs."""
    names = request.outputs or tuple(n for n in spec.outputs if n in tensors)
    outputs, blobs = [], []
    for name in names:
        array = tensors[name]
        datatype, dtype = _OUTPUT_TYPES[name]
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if name in request.binary_outputs:
            blob = np.ascontiguousarray(array, dtype=dtype).tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = array.reshape(-1).tolist()
        outputs.append(entry)
    doc: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": outputs}
    if request.id is not None:
        doc["id"] = request.id
    if parameters:
        doc["parameters"] = parameters
    head = dumps(doc)
    if not blobs:
        return head, {"content-type": "application/json"}
    return b"".join([head, *blobs]), {"content-type": "application/octet-stream",
                                      BINARY_HEADER: str(len(head))}


def _kind_name(kind: str) -> str:
    return {"b": "booleans", "U": "strings", "S": "strings", "O": "mixed values", "f": "fractions"}.get(kind, kind)


def _show(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (str, int, float, list, type(None))) else type(value).__name__
    return text if len(text) <= 60 else text[:57] + "..."


def _short(exc: Exception) -> str:
    return str(exc).split("\n")[0][:120]
