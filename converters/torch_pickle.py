"""Read PyTorch `.pt` / `.pth` checkpoints without torch and without running code.

    state = load_pt("ae.pt")        # {"encoder.weight": np.ndarray, ..., "activation": "TopK"}

`torch.save` writes a pickle whose tensors point at raw storages. Unpickling it with `pickle`
would let the file name any Python callable (`os.system`, `builtins.eval`, ...) and call it.
This reader uses a restricted unpickler: the only globals it resolves are the handful torch
uses to describe tensors and storages, plain containers (`collections.OrderedDict`, `set`,
...), and dtype markers. Each resolves to a function written here that builds data, never
to the real object of that name. Anything else raises `UnsafePickleError` before a single
call is made, so a malicious file cannot execute code.

Tensors come back as numpy arrays with their dtype (bfloat16 and float8 via `ml_dtypes`),
shape, strides and storage offset honoured; several tensors viewing one storage (slices,
transposes, shared weights) each get their own correct values. Both of torch's on-disk
formats are read: the zip format (torch >= 1.6, the default) and the legacy stream format
(`_use_new_zipfile_serialization=False`). The pre-1.0 tar format is refused with a clear
error.
"""

from __future__ import annotations

import _compat_pickle
import io
import pickle
import struct
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import ml_dtypes
import numpy as np

from jsae.errors import FormatError, JsaeError, UnsafePickleError

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001

# torch's storage classes and dtype names -> numpy dtypes.
_STORAGE_DTYPES: dict[str, np.dtype] = {
    "DoubleStorage": np.dtype(np.float64),
    "FloatStorage": np.dtype(np.float32),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
    "ComplexFloatStorage": np.dtype(np.complex64),
    "ComplexDoubleStorage": np.dtype(np.complex128),
    "UntypedStorage": np.dtype(np.uint8),
}
_TORCH_DTYPES: dict[str, np.dtype] = {
    "float64": np.dtype(np.float64),
    "double": np.dtype(np.float64),
    "float32": np.dtype(np.float32),
    "float": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "half": np.dtype(np.float16),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
    "float8_e4m3fn": np.dtype(ml_dtypes.float8_e4m3fn),
    "float8_e5m2": np.dtype(ml_dtypes.float8_e5m2),
    "int64": np.dtype(np.int64),
    "long": np.dtype(np.int64),
    "int32": np.dtype(np.int32),
    "int": np.dtype(np.int32),
    "int16": np.dtype(np.int16),
    "short": np.dtype(np.int16),
    "int8": np.dtype(np.int8),
    "uint8": np.dtype(np.uint8),
    "uint16": np.dtype(np.uint16),
    "uint32": np.dtype(np.uint32),
    "uint64": np.dtype(np.uint64),
    "bool": np.dtype(np.bool_),
    "complex64": np.dtype(np.complex64),
    "complex128": np.dtype(np.complex128),
}


# ------------------------------------------------------------------------------ data markers


class _StorageType:
    """What `torch.FloatStorage` & co. resolve to: only a dtype."""

    __slots__ = ("dtype", "name")

    def __init__(self, name: str, dtype: np.dtype):
        self.name, self.dtype = name, dtype


class _TensorClass:
    """What `torch.Tensor` / `torch.nn.parameter.Parameter` resolve to (a tag, never called)."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name


class _Storage:
    """A storage named in the pickle; its bytes are attached after unpickling."""

    __slots__ = ("data", "dtype", "key", "numel")

    def __init__(self, key: str, dtype: np.dtype, numel: int):
        self.key, self.dtype, self.numel = key, dtype, numel
        self.data: np.ndarray | None = None  # [numel] of dtype, once read


class _TensorRef:
    """A tensor described by the pickle: a strided view into a storage."""

    __slots__ = ("dtype", "offset", "shape", "storage", "stride")

    def __init__(self, storage: _Storage, offset: int, shape: tuple, stride: tuple, dtype):
        self.storage, self.offset, self.shape, self.stride, self.dtype = (
            storage,
            offset,
            shape,
            stride,
            dtype,
        )


# ------------------------------------------------------------------------------ allowed calls


def _as_int_tuple(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, tuple | list) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        raise FormatError(f"tensor {what} must be a tuple of integers, got {value!r}.")
    return tuple(value)


def _rebuild_tensor_v2(
    storage, storage_offset, size, stride, requires_grad=False, hooks=None, metadata=None
):
    if not isinstance(storage, _Storage) or not isinstance(storage_offset, int):
        raise FormatError("malformed tensor record in the pickle (storage or offset).")
    size = _as_int_tuple(size, "size")
    stride = _as_int_tuple(stride, "stride")
    if len(size) != len(stride):
        raise FormatError(f"tensor size {size} and stride {stride} differ in length.")
    return _TensorRef(storage, storage_offset, size, stride, storage.dtype)


def _rebuild_tensor_v3(
    storage, storage_offset, size, stride, requires_grad, hooks, dtype, metadata=None
):
    ref = _rebuild_tensor_v2(storage, storage_offset, size, stride)
    if not isinstance(dtype, np.dtype):
        raise FormatError(f"malformed tensor dtype {dtype!r} in the pickle.")
    ref.dtype = dtype
    return ref


def _rebuild_tensor_legacy(storage, storage_offset, size, stride):
    return _rebuild_tensor_v2(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, hooks=None, state=None):
    if not isinstance(data, _TensorRef):
        raise FormatError("malformed parameter record in the pickle.")
    return data


def _rebuild_from_type_v2(func, new_type, args, state):
    if func is not _rebuild_tensor_v2 or not isinstance(new_type, _TensorClass):
        raise UnsafePickleError(
            "the pickle rebuilds a tensor subclass through an unexpected function; only "
            "plain tensors and parameters are read."
        )
    return func(*args)


def _ordered_dict(*args: Any) -> OrderedDict:
    return OrderedDict(*args)


def _codecs_encode(text: Any, encoding: str = "utf-8") -> bytes:
    # Protocol-2 pickles spell bytes objects as _codecs.encode(str, "latin1").
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "utf-8", "utf8"):
        raise FormatError("malformed bytes record in the pickle.")
    return text.encode(encoding)


def _numpy_dtype(spec: Any, align: bool = False, copy: bool = False) -> np.dtype:
    dtype = np.dtype(str(spec)) if isinstance(spec, str) else None
    if dtype is None or dtype.hasobject:
        raise UnsafePickleError(f"refusing numpy dtype {spec!r} (only plain numeric dtypes).")
    return dtype


def _numpy_scalar(dtype: Any, data: Any = None) -> Any:
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, bytes):
        raise UnsafePickleError("refusing a numpy scalar that is not a plain number.")
    if len(data) != dtype.itemsize:
        raise FormatError("malformed numpy scalar in the pickle.")
    return np.frombuffer(data, dtype)[0]


def _tuple(value: Any = ()) -> tuple:
    return tuple(value)


def _device(*args: Any) -> str:
    return ":".join(str(a) for a in args)


def _safe_builtin(kind: type) -> Callable[..., Any]:
    def build(*args: Any) -> Any:
        return kind(*args)

    return build


def _allowed_globals() -> dict[tuple[str, str], Any]:
    table: dict[tuple[str, str], Any] = {
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor_legacy,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
        ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
        ("torch", "Tensor"): _TensorClass("Tensor"),
        ("torch.nn.parameter", "Parameter"): _TensorClass("Parameter"),
        ("torch", "Size"): _tuple,
        ("torch", "device"): _device,
        ("collections", "OrderedDict"): _ordered_dict,
        ("_codecs", "encode"): _codecs_encode,
        ("builtins", "set"): _safe_builtin(set),
        ("builtins", "frozenset"): _safe_builtin(frozenset),
        ("builtins", "complex"): _safe_builtin(complex),
        ("builtins", "slice"): _safe_builtin(slice),
        ("numpy", "dtype"): _numpy_dtype,
        ("numpy.core.multiarray", "scalar"): _numpy_scalar,
        ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    }
    for name, dtype in _STORAGE_DTYPES.items():
        table["torch", name] = _StorageType(name, dtype)
        table["torch.storage", name] = _StorageType(name, dtype)
    for name, dtype in _TORCH_DTYPES.items():
        table["torch", name] = dtype
    return table


_ALLOWED = _allowed_globals()


class _RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler that resolves only the globals in `_ALLOWED` and torch storage ids."""

    def __init__(self, file: BinaryIO, source: str, storages: dict[str, _Storage]):
        super().__init__(file)
        self._source = source
        self._storages = storages

    def find_class(self, module: str, name: str) -> Any:
        # Protocol-2 pickles (torch's default) spell Python 3 names the Python 2 way.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[module, name]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        try:
            return _ALLOWED[module, name]
        except (KeyError, TypeError):
            raise UnsafePickleError(
                f"refusing to load {self._source}: its pickle asks for the Python object "
                f"{module}.{name}, and jsae only rebuilds tensors and plain containers (loading "
                "it with pickle or torch.load(weights_only=False) could run arbitrary code). If "
                "you trust the file, re-save it as a state dict of tensors "
                "(torch.save(model.state_dict(), path)) or as safetensors."
            ) from None

    def persistent_load(self, pid: Any) -> _Storage:
        if not isinstance(pid, tuple) or len(pid) < 5:
            raise FormatError(f"{self._source}: unsupported persistent id {pid!r} in the pickle.")
        kind = pid[0].decode() if isinstance(pid[0], bytes) else pid[0]
        storage_type, key, _location, numel = pid[1:5]
        if kind != "storage" or not isinstance(storage_type, _StorageType):
            raise UnsafePickleError(
                f"refusing to load {self._source}: persistent object {kind!r} is not a "
                "tensor storage."
            )
        if len(pid) > 5 and pid[5] is not None:
            raise FormatError(f"{self._source}: storage views from torch < 1.0 are not supported.")
        if not isinstance(numel, int) or numel < 0:
            raise FormatError(f"{self._source}: malformed storage size {numel!r}.")
        key = str(key)
        storage = self._storages.get(key)
        if storage is None:
            storage = self._storages[key] = _Storage(key, storage_type.dtype, numel)
        return storage


def _unpickle(file: BinaryIO, source: str, storages: dict[str, _Storage]) -> Any:
    try:
        return _RestrictedUnpickler(file, source, storages).load()
    except (UnsafePickleError, FormatError):
        raise
    except Exception as exc:  # any malformed opcode stream
        raise FormatError(
            f"{source} could not be unpickled ({type(exc).__name__}: {exc}); the file is "
            "corrupt, truncated, or not a torch checkpoint."
        ) from None


# ------------------------------------------------------------------------------ file formats


def _load_zip(path: Path, zf: zipfile.ZipFile, read_data: bool = True) -> Any:
    names = zf.namelist()
    pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
    if not pkl:
        raise FormatError(f"{path} is a zip file but not a torch checkpoint (no */data.pkl).")
    prefix = pkl[0][: -len("data.pkl")]
    big_endian = False
    if f"{prefix}byteorder" in names:
        big_endian = zf.read(f"{prefix}byteorder").strip() == b"big"
    storages: dict[str, _Storage] = {}
    with zf.open(pkl[0]) as fh:
        obj = _unpickle(io.BytesIO(fh.read()), str(path), storages)
    if not read_data:
        return obj
    for storage in storages.values():
        member = f"{prefix}data/{storage.key}"
        if member not in names:
            raise FormatError(f"{path} is missing the storage {member}; the file is truncated.")
        nbytes = storage.numel * storage.dtype.itemsize
        if zf.getinfo(member).file_size != nbytes:
            raise FormatError(
                f"{path}: storage {storage.key} holds {zf.getinfo(member).file_size} bytes, "
                f"the pickle says {nbytes}; the file is corrupt."
            )
        buf = np.empty(nbytes, np.uint8)
        with zf.open(member) as fh:
            if fh.readinto(memoryview(buf)) != nbytes:
                raise FormatError(f"{path}: storage {storage.key} is truncated.")
        storage.data = _typed(buf, storage.dtype, big_endian)
    return obj


def _typed(raw: np.ndarray, dtype: np.dtype, big_endian: bool) -> np.ndarray:
    if big_endian and dtype.itemsize > 1:
        return raw.view(dtype.newbyteorder(">")).astype(dtype)
    return raw.view(dtype)


def _load_legacy(path: Path, fh: BinaryIO, read_data: bool = True) -> Any:
    storages: dict[str, _Storage] = {}
    source = str(path)
    if _unpickle(fh, source, storages) != LEGACY_MAGIC_NUMBER:
        raise FormatError(f"{path} is not a torch checkpoint (bad magic number).")
    if _unpickle(fh, source, storages) != LEGACY_PROTOCOL_VERSION:
        raise FormatError(f"{path}: unsupported legacy torch serialization protocol.")
    sys_info = _unpickle(fh, source, storages)
    little = not isinstance(sys_info, dict) or sys_info.get("little_endian", True)
    obj = _unpickle(fh, source, storages)
    if not read_data:
        return obj
    keys = _unpickle(fh, source, storages)
    if not isinstance(keys, list):
        raise FormatError(f"{path}: malformed storage key list.")
    for key in keys:
        storage = storages.get(str(key))
        if storage is None:
            raise FormatError(f"{path}: storage {key!r} is listed but never used.")
        header = fh.read(8)
        if len(header) != 8:
            raise FormatError(f"{path} is truncated (storage {key}).")
        (numel,) = struct.unpack("<q" if little else ">q", header)
        if numel != storage.numel:
            raise FormatError(
                f"{path}: storage {key} has {numel} elements, expected {storage.numel}."
            )
        nbytes = numel * storage.dtype.itemsize
        buf = np.empty(nbytes, np.uint8)
        if fh.readinto(memoryview(buf)) != nbytes:
            raise FormatError(f"{path} is truncated (storage {key}).")
        storage.data = _typed(buf, storage.dtype, not little)
    return obj


# ------------------------------------------------------------------------------ tensors


def _materialize(ref: _TensorRef, source: str) -> np.ndarray:
    """The numpy array a tensor record describes, after checking it stays inside its storage."""
    storage = ref.storage
    if storage.data is None:
        raise FormatError(f"{source}: storage {storage.key} has no data.")
    data = storage.data
    if ref.dtype != storage.dtype:  # v3 tensors over an untyped (byte) storage
        if data.nbytes % ref.dtype.itemsize:
            raise FormatError(f"{source}: storage {storage.key} does not hold whole {ref.dtype}.")
        data = data.view(ref.dtype)
    shape, stride, offset = ref.shape, ref.stride, ref.offset
    if any(s < 0 for s in shape) or any(s < 0 for s in stride) or offset < 0:
        raise FormatError(f"{source}: negative size, stride or offset in a tensor record.")
    numel = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if numel == 0:
        return np.zeros(shape, data.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(shape, stride, strict=True))
    if last >= data.size:
        raise FormatError(
            f"{source}: a tensor of shape {shape} (stride {stride}, offset {offset}) reaches "
            f"past the end of its storage ({data.size} elements); the file is corrupt."
        )
    itemsize = data.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        data[offset:], shape=shape, strides=tuple(s * itemsize for s in stride), writeable=False
    )
    contiguous_whole = offset == 0 and numel == data.size and view.flags.c_contiguous
    return data.reshape(shape) if contiguous_whole else np.array(view)


class TensorInfo:
    """A tensor's shape and dtype, as `describe_pt` reports it (no data read)."""

    __slots__ = ("dtype", "shape")

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype):
        self.shape, self.dtype = shape, dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __repr__(self) -> str:
        return f"TensorInfo(shape={self.shape}, dtype={self.dtype})"


def _resolve(obj: Any, source: str, memo: dict[int, Any], read_data: bool = True) -> Any:
    """Replace tensor records by arrays (or TensorInfo) throughout nested containers."""
    if isinstance(obj, _TensorRef):
        if id(obj) not in memo:
            memo[id(obj)] = (
                _materialize(obj, source) if read_data else TensorInfo(obj.shape, obj.dtype)
            )
        return memo[id(obj)]
    if isinstance(obj, _Storage | _StorageType | _TensorClass):
        raise FormatError(f"{source}: bare torch storages or types are not supported.")
    if isinstance(obj, OrderedDict):
        return OrderedDict((k, _resolve(v, source, memo, read_data)) for k, v in obj.items())
    if isinstance(obj, dict):
        return {k: _resolve(v, source, memo, read_data) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_resolve(v, source, memo, read_data) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_resolve(v, source, memo, read_data) for v in obj)
    return obj


def load_pt(path: str | Path) -> Any:
    """Load a torch checkpoint as Python data with numpy arrays in place of tensors.

    Raises `UnsafePickleError` when the pickle references anything beyond tensors and plain
    containers (nothing from the file is executed), `FormatError` when it is not a readable
    torch checkpoint.
    """
    return _load(Path(path), read_data=True)


def describe_pt(path: str | Path) -> Any:
    """Like `load_pt`, but tensors come back as `TensorInfo` (shape, dtype): no data is read."""
    return _load(Path(path), read_data=False)


# What zipfile raises on damaged bytes: bad headers or CRCs (BadZipFile), member names that
# are not UTF-8 (UnicodeDecodeError), cut-off or garbled compressed data (EOFError,
# zlib.error), seeks past the end (OSError, ValueError), flag bits that claim an unknown
# compression or encryption (NotImplementedError, RuntimeError).
_ARCHIVE_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    UnicodeDecodeError,
    EOFError,
    zlib.error,
    OSError,
    ValueError,
    NotImplementedError,
    RuntimeError,
    struct.error,
)


def _load(path: Path, read_data: bool) -> Any:
    if not path.is_file():
        raise FormatError(f"{path} is missing.")
    with open(path, "rb") as fh:
        head = fh.read(512)
        fh.seek(0)
        if _is_zip(path, fh):
            fh.seek(0)
            obj = _read_zip(path, fh, read_data)
        elif len(head) >= 262 and head[257:262] == b"ustar":
            raise FormatError(
                f"{path} uses torch's pre-1.0 tar format, which jsae does not read; load it "
                "with torch once and save it again (torch.save(torch.load(path), path))."
            )
        elif head[:1] == b"\x80":
            fh.seek(0)
            obj = _load_legacy(path, fh, read_data)
        else:
            raise FormatError(f"{path} is not a torch checkpoint (neither zip nor pickle).")
    return _resolve(obj, str(path), {}, read_data)


def _archive_error(path: Path, exc: Exception) -> FormatError:
    return FormatError(
        f"{path} is corrupt or truncated: its zip archive cannot be read "
        f"({type(exc).__name__}: {exc}). Download or save it again."
    )


def _is_zip(path: Path, fh: BinaryIO) -> bool:
    """Whether the file ends in a zip directory (a damaged one raises while looking)."""
    try:
        return zipfile.is_zipfile(fh)
    except _ARCHIVE_ERRORS as exc:
        raise _archive_error(path, exc) from None


def _read_zip(path: Path, fh: BinaryIO, read_data: bool) -> Any:
    """A zip-format checkpoint; zipfile's errors on damaged bytes become FormatErrors."""
    try:
        with zipfile.ZipFile(fh) as zf:
            return _load_zip(path, zf, read_data)
    except JsaeError:
        raise
    except _ARCHIVE_ERRORS as exc:  # a damaged directory, header, member name or member
        raise _archive_error(path, exc) from None


def load_state_dict(path: str | Path) -> dict[str, Any]:
    """`load_pt` for files holding one dict (tensors and plain values) at the top level."""
    obj = load_pt(path)
    if not isinstance(obj, dict):
        raise FormatError(f"{path} holds a {type(obj).__name__}, expected a dict of tensors.")
    return dict(obj)


__all__ = ["TensorInfo", "describe_pt", "load_pt", "load_state_dict"]
