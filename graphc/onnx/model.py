"""Reading an ONNX model as untrusted input: the protobuf, its opset, its tensors.

`onnx` is imported lazily (`require_onnx`): graphc imports without it, and `gc.onnx` says
what to install. Every failure is a `GraphcError` naming the file or the tensor; protobuf
and onnx exceptions never escape. External data is read only from regular files inside the
model's folder (symlinks resolved), bounded by the size the tensor's shape implies; dtypes
graphc has no type for, and cannot widen, are named in the error.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from graphc.errors import GraphcError
from graphc.ir import DType

from .wire import Source, split_raw_data

# A model file larger than this is refused before it is parsed (protobuf's own limit is 2 GiB).
MAX_MODEL_BYTES = 2 << 30
# The opset versions of the default domain the importer knows. A model of an early opset
# imports when each of its ops has a rule at that version (rules name the first version they
# implement); the others are reported, as for any opset.
MIN_OPSET, MAX_OPSET = 1, 28


class OnnxError(GraphcError):
    """An ONNX model graphc cannot read or import."""


def require_onnx() -> Any:
    """The `onnx` module, or a GraphcError saying how to install it."""
    try:
        import onnx
    except ImportError:
        raise OnnxError("gc.onnx needs the onnx package: pip install 'graphc[onnx]'") from None
    return onnx


@dataclass(frozen=True)
class OnnxModel:
    """A parsed model: the protobuf, the opset of its default domain, and the folder its
    external data files must lie in (None unless it was read from a path)."""

    proto: Any  # onnx.ModelProto
    opset: int
    origin: str  # for error messages: a path, "<bytes>" or "<ModelProto>"
    folder: Path | None = None
    # The opset version of every imported domain ("" for ONNX's own).
    domains: dict[str, int] = field(default_factory=dict)
    # Lifted initializers' values by index in graph.initializer (`read_model(lift=True)`).
    data: dict[int, np.ndarray] = field(default_factory=dict)


def read_model(source: str | os.PathLike[str] | bytes | Any, *,
               lift: bool = False) -> OnnxModel:
    """Parse `source` (a path, the serialized bytes, or an `onnx.ModelProto`).

    With `lift`, the large initializers' bytes are read straight into arrays (`wire`) and
    left out of the parsed message: `OnnxModel.data` holds them by initializer index, and
    the message's tensors have no data, so only a reader that looks there (the importer's
    `tensor_array(..., values=model.data.get(i))`) may ask for it."""
    onnx = require_onnx()
    data: dict[int, np.ndarray] = {}
    if isinstance(source, onnx.ModelProto):
        proto, origin = source, "<ModelProto>"
    elif isinstance(source, (bytes, bytearray, memoryview, str, os.PathLike)):
        is_path = isinstance(source, (str, os.PathLike))
        origin = str(source) if is_path else "<bytes>"
        with _source(source) as src:
            lifted = split_raw_data(src) if lift else None
            serialized = lifted.model if lifted else src.read_all()
        if lifted:
            data = lifted.data
        proto = onnx.ModelProto()
        try:
            proto.ParseFromString(serialized)
        except Exception as exc:  # google.protobuf.message.DecodeError and friends
            raise OnnxError(f"{origin}: not a valid ONNX model ({exc})") from None
    else:
        raise OnnxError("gc.onnx.load expects a path, bytes or an onnx.ModelProto, "
                        f"got {type(source).__name__}")
    if not proto.HasField("graph"):
        raise OnnxError(f"{origin}: the model has no graph")
    folder = Path(source).parent if isinstance(source, (str, os.PathLike)) else None
    domains: dict[str, int] = {}
    for o in proto.opset_import:
        key = "" if o.domain in ("", "ai.onnx") else o.domain
        domains[key] = max(domains.get(key, 0), int(o.version))
    return OnnxModel(proto, _default_opset(proto, origin), origin, folder, domains, data)


def rule_key(domain: str, op_type: str) -> str:
    """The rule registry's key of an op: ONNX's own by type, other domains' qualified by
    the domain (`ai.onnx.ml.Binarizer`)."""
    return op_type if domain in ("", "ai.onnx") else f"{domain}.{op_type}"


@contextlib.contextmanager
def _source(source: str | os.PathLike[str] | bytes | bytearray | memoryview,
            ) -> Iterator[Source]:
    """The serialized model as a `wire.Source`: a path is opened (a regular file, at most
    MAX_MODEL_BYTES) and read by position, not read whole."""
    if not isinstance(source, (str, os.PathLike)):
        yield Source(source if isinstance(source, bytes) else bytes(source))
        return
    path = Path(source)
    try:
        if not path.is_file():
            raise OnnxError(f"{path}: not a regular file")
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_MODEL_BYTES:
                raise OnnxError(f"{path}: {size} bytes, more than the {MAX_MODEL_BYTES} an "
                                "ONNX model can hold")
            # os.pread and os.preadv are POSIX (preadv: macOS 11+); elsewhere, read whole.
            yield (Source(fd=f.fileno(), size=size) if hasattr(os, "preadv")
                   else Source(f.read(MAX_MODEL_BYTES + 1)))
    except OSError as exc:
        raise OnnxError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _default_opset(proto: Any, origin: str) -> int:
    versions = [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")]
    if not versions:
        if not len(proto.opset_import):
            raise OnnxError(f"{origin}: the model imports no opset")
        # Only other domains (ai.onnx.ml, training): ONNX's own ops are then opset 1.
        return MIN_OPSET
    opset = max(versions)
    if opset < MIN_OPSET:
        raise OnnxError(f"{origin}: opset {opset}; graphc imports opsets {MIN_OPSET} to "
                        f"{MAX_OPSET}")
    return opset


# ONNX TensorProto.DataType -> graphc dtype; the others are named in errors.
DTYPES: dict[int, DType] = {1: DType.float32, 6: DType.int32, 7: DType.int64, 9: DType.bool,
                            11: DType.float64}
DTYPE_NAMES = {0: "UNDEFINED", 1: "FLOAT", 2: "UINT8", 3: "INT8", 4: "UINT16", 5: "INT16",
               6: "INT32", 7: "INT64", 8: "STRING", 9: "BOOL", 10: "FLOAT16", 11: "DOUBLE",
               12: "UINT32", 13: "UINT64", 14: "COMPLEX64", 15: "COMPLEX128", 16: "BFLOAT16",
               17: "FLOAT8E4M3FN", 18: "FLOAT8E4M3FNUZ", 19: "FLOAT8E5M2",
               20: "FLOAT8E5M2FNUZ", 21: "UINT4", 22: "INT4", 23: "FLOAT4E2M1",
               24: "FLOAT8E8M0", 25: "UINT2", 26: "INT2", 27: "FLOAT6E2M3",
               28: "FLOAT6E3M2"}
NUMPY_DTYPES = {DType.float32: np.float32, DType.float64: np.float64, DType.int32: np.int32,
                DType.int64: np.int64, DType.bool: np.bool_}


# Element types graphc computes in a wider type: float16/bfloat16 and the float8/float4
# formats in float32, narrow and unsigned integers (int4, uint2, ...) in int32/int64. Values
# convert exactly (uint64 above 2^63 excepted); arithmetic is done in the wider type (so no
# float16 rounding in between, no uint8 wrap-around), as ONNX Runtime's CPU kernels do for
# float16. A Cast *to* a narrow type rounds to it (`rules/narrow.py`).
WIDENED: dict[int, DType] = {10: DType.float32, 16: DType.float32, 2: DType.int32,
                             3: DType.int32, 4: DType.int32, 5: DType.int32, 12: DType.int64,
                             13: DType.int64, 17: DType.float32, 18: DType.float32,
                             19: DType.float32, 20: DType.float32, 23: DType.float32,
                             24: DType.float32, 21: DType.int32, 22: DType.int32,
                             25: DType.int32, 26: DType.int32}
# Element types packed several to a byte (external data of these is refused).
PACKED = frozenset({21, 22, 23, 25, 26})
_NUMPY_TYPES: dict[int, Any] = {1: np.float32, 2: np.uint8, 3: np.int8, 4: np.uint16,
                                5: np.int16, 6: np.int32, 7: np.int64, 9: np.bool_,
                                10: np.float16, 11: np.float64, 12: np.uint32, 13: np.uint64}
# bfloat16, float8, int4, ... as numpy sees them: ml_dtypes' types (it comes with onnx).
_ML_DTYPES = {16: "bfloat16", 17: "float8_e4m3fn", 18: "float8_e4m3fnuz", 19: "float8_e5m2",
              20: "float8_e5m2fnuz", 21: "uint4", 22: "int4", 23: "float4_e2m1fn",
              24: "float8_e8m0fnu", 25: "uint2", 26: "int2"}


def onnx_numpy(elem_type: int) -> Any | None:
    """numpy's type of ONNX element type `elem_type`, or None when numpy has none. The
    narrow types come from ml_dtypes, imported on first use: importing it took 0.7 s,
    which every `import graphc` paid while it was imported with this module."""
    if elem_type in _NUMPY_TYPES:
        return _NUMPY_TYPES[elem_type]
    name = _ML_DTYPES.get(elem_type)
    if name is None:
        return None
    try:
        import ml_dtypes
    except ImportError:  # pragma: no cover - without onnx there is no model to convert
        return None
    return getattr(ml_dtypes, name, None)  # None: an ml_dtypes without the newest types


def graphc_dtype(elem_type: int, what: str) -> DType:
    """The graphc dtype of ONNX element type `elem_type` (`WIDENED` for types graphc has no
    type of its own for); `what` names the value in errors."""
    dtype = DTYPES.get(elem_type) or WIDENED.get(elem_type)
    if dtype is None:
        name = DTYPE_NAMES.get(elem_type, str(elem_type))
        raise OnnxError(f"{what}: element type {name} has no graphc dtype (graphc has "
                        "float32, float64, int32, int64, bool)")
    return dtype


def numpy_dtype_ok(array: np.ndarray) -> bool:
    return array.dtype.type in (np.float32, np.float64, np.int32, np.int64, np.bool_)


def tensor_array(tensor: Any, what: str, folder: Path | None = None,
                 copy: bool = True, values: np.ndarray | None = None) -> np.ndarray:
    """A TensorProto as a numpy array of a graphc dtype: a copy the caller owns, or with
    ``copy=False`` possibly a read-only view of the tensor's bytes (for values that become
    constants: copying a model's weights again was a third of a cached import). External
    data is read from a regular file inside `folder` (the model's), bounded by the size
    the tensor's shape implies. `values`: the tensor's data lifted out of the message by
    `read_model(lift=True)` (flat, owned by the caller, used without a copy)."""
    onnx = require_onnx()
    graphc_dtype(tensor.data_type, what)
    count = 1
    for d in tensor.dims:
        if d < 0:
            raise OnnxError(f"{what}: negative dimension {d}")
        count *= d
    if count > MAX_MODEL_BYTES:
        raise OnnxError(f"{what}: {count} elements, more than a model file can hold")
    if values is not None:
        if values.size != count:
            raise OnnxError(f"{what}: {values.size} values for shape {tuple(tensor.dims)}")
        array = values.reshape(tuple(tensor.dims))
        array.flags.writeable = copy
        return array
    if tensor.data_location == onnx.TensorProto.EXTERNAL or tensor.external_data:
        return _external(tensor, what, folder, count)
    try:
        array = onnx.numpy_helper.to_array(tensor)
    except Exception as exc:
        raise OnnxError(f"{what}: malformed tensor ({exc})") from None
    if array.size != count:
        raise OnnxError(f"{what}: {array.size} values for shape {tuple(tensor.dims)}")
    dtype = NUMPY_DTYPES[graphc_dtype(tensor.data_type, what)]
    if not copy and array.dtype == dtype and array.flags.c_contiguous and array.flags.aligned:
        array.flags.writeable = False
        return array
    return np.array(array, dtype=dtype, copy=True)


def _external(tensor: Any, what: str, folder: Path | None, count: int) -> np.ndarray:
    """A tensor whose bytes live in a file beside the model: location, offset and length
    from its `external_data`; the file must resolve (symlinks included) inside `folder`."""
    if folder is None:
        raise OnnxError(f"{what}: its data is in an external file; load the model from its "
                        "path so that the file can be found")
    info = {e.key: e.value for e in tensor.external_data}
    location = info.get("location", "")
    if not location or Path(location).is_absolute():
        raise OnnxError(f"{what}: external data location {location!r} must be a relative path")
    root = folder.resolve()
    path = (root / location).resolve()
    if root not in path.parents:
        raise OnnxError(f"{what}: external data {location!r} lies outside the model's folder")
    dtype = onnx_numpy(tensor.data_type)
    if dtype is None or tensor.data_type == 9 or tensor.data_type in PACKED:
        raise OnnxError(f"{what}: external data of this element type is not supported")
    itemsize = np.dtype(dtype).itemsize
    try:
        offset = int(info.get("offset", "0"))
        length = int(info["length"]) if "length" in info else count * itemsize
    except ValueError:
        raise OnnxError(f"{what}: malformed external data offset or length") from None
    if offset < 0 or length != count * itemsize:
        raise OnnxError(f"{what}: external data of {length} bytes at offset {offset} for "
                        f"{count} elements of {itemsize} bytes")
    try:
        if not path.is_file():
            raise OnnxError(f"{what}: external data {location!r} is not a regular file")
        with path.open("rb") as f:
            f.seek(offset)
            data = f.read(length)
    except OSError as exc:
        raise OnnxError(f"{what}: cannot read external data {location!r} "
                        f"({exc.strerror or exc})") from None
    if len(data) != length:
        raise OnnxError(f"{what}: external data {location!r} ends after {len(data)} of "
                        f"{length} bytes")
    array = np.frombuffer(data, dtype=np.dtype(dtype).newbyteorder("<"))
    array = array.reshape(tuple(tensor.dims))
    return np.array(array, dtype=NUMPY_DTYPES[graphc_dtype(tensor.data_type, what)], copy=True)
