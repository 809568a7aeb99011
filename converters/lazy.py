"""Tensors read from disk on demand, and their placement onto devices a chunk at a time.

Converters return parameters as `LazyTensor`s where the file format allows it (safetensors,
uncompressed `.npz`): a shape, a dtype and a `read(index)` that reads only that region of the
file. `to_device` then builds each parameter (or each of its shards on a mesh) by reading
CHUNK_BYTES of file at a time into an aligned host buffer of the final dtype, which XLA adopts
without a copy on CPU (DLPack) or copies to an accelerator. Host memory therefore peaks near
the size of the parameters plus one chunk, instead of two full copies (file contents in
numpy, then a device copy).

A `LazyTensor` is also array-like (`np.asarray(t)` reads it whole), so code that does not care
about memory can treat converter output as plain arrays.
"""

from __future__ import annotations

import functools
import math
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from safetensors import safe_open

from jsae.errors import FormatError, NonFiniteError

Index = tuple[slice, ...]

# Largest host buffer `to_device` reads at once.
CHUNK_BYTES = 16 * 2**20


def _full_index(shape: tuple[int, ...]) -> Index:
    return tuple(slice(0, n) for n in shape)


class LazyTensor:
    """A tensor whose values are read from a file only when asked for, region by region."""

    def __init__(
        self,
        shape: tuple[int, ...],
        dtype: Any,
        reader: Callable[[Index], np.ndarray],
        source: str,
    ):
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype)
        self._reader = reader
        self.source = source  # "file:key", for error messages

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    def read(self, index: Index | None = None) -> np.ndarray:
        """The values in `index` (one slice per axis; None = everything), as a new array."""
        index = _full_index(self.shape) if index is None else index
        out = np.asarray(self._reader(index))
        expected = tuple(len(range(*s.indices(n))) for s, n in zip(index, self.shape, strict=True))
        if out.shape != expected:
            raise FormatError(f"{self.source}: read {out.shape} where {expected} was expected.")
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self.read()
        return out if dtype is None else out.astype(dtype)

    @property
    def T(self) -> LazyTensor:
        """The transpose of a 2-D tensor (reads the matching region and transposes it)."""
        if self.ndim != 2:
            raise FormatError(f"{self.source}: only 2-D tensors can be transposed lazily.")
        return LazyTensor(
            self.shape[::-1],
            self.dtype,
            lambda index: self._reader(index[::-1]).T,
            self.source + ".T",
        )

    def map(self, fn: Callable[[np.ndarray], np.ndarray], dtype: Any = None) -> LazyTensor:
        """Apply an elementwise function to every region read (e.g. a scale factor)."""
        return LazyTensor(
            self.shape, dtype or self.dtype, lambda index: fn(self._reader(index)), self.source
        )

    def __repr__(self) -> str:
        return f"LazyTensor(shape={self.shape}, dtype={self.dtype}, source={self.source!r})"


ArrayLike = np.ndarray | LazyTensor | jax.Array


def as_lazy(value: Any, source: str = "array") -> LazyTensor:
    """Wrap an in-memory array as a LazyTensor (reads are slices of it)."""
    if isinstance(value, LazyTensor):
        return value
    arr = np.asarray(value)
    return LazyTensor(arr.shape, arr.dtype, lambda index: arr[index], source)


def shape_of(value: Any) -> tuple[int, ...]:
    return value.shape if isinstance(value, LazyTensor) else tuple(np.shape(value))


# ----------------------------------------------------------------------------- file sources


def safetensors_tensors(path: str | Path) -> dict[str, LazyTensor]:
    """Every tensor of a .safetensors file, lazily (the file is memory-mapped per read)."""
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{path} is missing.")
    try:
        with safe_open(str(path), framework="numpy") as f:
            specs = {
                key: (tuple(f.get_slice(key).get_shape()), f.get_slice(key).get_dtype())
                for key in f.keys()  # noqa: SIM118 (safe_open handles are not dicts)
            }
    except Exception as exc:
        raise FormatError(
            f"{path} could not be read as safetensors ({exc}); it is probably truncated or "
            "corrupt: download or copy it again."
        ) from None
    out = {}
    for key, (shape, st_dtype) in specs.items():
        out[key] = LazyTensor(
            shape,
            _safetensors_dtype(st_dtype, path, key),
            _safetensors_reader(path, key),
            f"{path}:{key}",
        )
    return out


_ST_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
}


def _safetensors_dtype(name: str, path: Path, key: str) -> np.dtype:
    import ml_dtypes

    np_name = _ST_DTYPES.get(name)
    if np_name is None:
        raise FormatError(f"{path}: tensor {key!r} has unsupported dtype {name}.")
    return np.dtype(getattr(ml_dtypes, np_name, None) or np_name)


def _safetensors_reader(path: Path, key: str) -> Callable[[Index], np.ndarray]:
    def read(index: Index) -> np.ndarray:
        with safe_open(str(path), framework="numpy") as f:
            sl = f.get_slice(key)
            return np.array(sl[index] if index else sl[...])

    return read


def npz_tensors(path: str | Path) -> dict[str, LazyTensor]:
    """Every array of an .npz file, lazily: stored (uncompressed) members are memory-mapped
    region by region; compressed members are decompressed whole on first read."""
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{path} is missing.")
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise FormatError(f"{path} is not a readable .npz archive ({exc}).") from None
    out = {}
    with zf, open(path, "rb") as fh:
        for info in zf.infolist():
            if not info.filename.endswith(".npy"):
                continue
            key = info.filename[: -len(".npy")]
            source = f"{path}:{key}"
            try:
                with zf.open(info) as member:
                    version = np.lib.format.read_magic(member)
                    read_header = (
                        np.lib.format.read_array_header_1_0
                        if version == (1, 0)
                        else np.lib.format.read_array_header_2_0
                    )
                    shape, fortran, dtype = read_header(member)
                    header_len = member.tell()
            except Exception as exc:
                raise FormatError(f"{source}: damaged .npy header ({exc}).") from None
            if dtype.hasobject:
                raise FormatError(f"{source} holds Python objects; only numeric arrays are read.")
            if info.compress_type == zipfile.ZIP_STORED:
                fh.seek(info.header_offset)
                local = fh.read(30)
                name_len, extra_len = (
                    int.from_bytes(local[26:28], "little"),
                    int.from_bytes(local[28:30], "little"),
                )
                offset = info.header_offset + 30 + name_len + extra_len + header_len
                if offset + math.prod(shape) * dtype.itemsize > path.stat().st_size:
                    raise FormatError(
                        f"{source} reaches past the end of {path}; the file is truncated."
                    )
                reader = _memmap_reader(path, offset, shape, dtype, fortran)
            else:
                reader = _decompressing_reader(path, key)
            out[key] = LazyTensor(shape, dtype, reader, source)
    return out


def _memmap_reader(
    path: Path, offset: int, shape: tuple, dtype: np.dtype, fortran: bool
) -> Callable[[Index], np.ndarray]:
    def read(index: Index) -> np.ndarray:
        if math.prod(shape) == 0:
            return np.zeros(shape, dtype)[index]
        mm = np.memmap(
            path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C"
        )
        try:
            return np.array(mm[index])
        finally:
            del mm

    return read


def _decompressing_reader(path: Path, key: str) -> Callable[[Index], np.ndarray]:
    cache: dict[str, np.ndarray] = {}

    def read(index: Index) -> np.ndarray:
        if key not in cache:
            try:
                with np.load(path, allow_pickle=False) as data:
                    cache[key] = data[key]
            except Exception as exc:
                raise FormatError(f"{path}:{key} could not be decompressed ({exc}).") from None
        return cache[key][index]

    return read


# ----------------------------------------------------------------------------- placement


def aligned_empty(shape: tuple[int, ...], dtype: Any, align: int = 64) -> np.ndarray:
    """An uninitialised array whose data starts on an `align`-byte boundary (XLA's minimum
    for adopting a host buffer without copying it)."""
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    raw = np.empty(nbytes + align, np.uint8)
    offset = (-raw.ctypes.data) % align
    return raw[offset : offset + nbytes].view(dtype).reshape(shape)


@functools.partial(jax.jit, static_argnums=1, donate_argnums=0)
def _bitcast(x: jax.Array, dtype: Any) -> jax.Array:
    return lax.bitcast_convert_type(x, dtype)


def _adopt(host: np.ndarray, device: Any) -> jax.Array:
    """A jax array on `device` holding `host`'s values, sharing its memory where XLA can
    (CPU device 0: DLPack import, no copy), else copied (other devices)."""
    if device.platform == "cpu" and device == jax.devices("cpu")[0]:
        try:
            if host.dtype.kind in "biufc":
                return jnp.from_dlpack(host, copy=False)
            # bfloat16 & co. cannot cross DLPack: import the bits, reinterpret in place
            bits = np.dtype(f"u{host.dtype.itemsize}")
            return _bitcast(jnp.from_dlpack(host.view(bits), copy=False), host.dtype)
        except (BufferError, ValueError, TypeError):
            pass
    out = jax.device_put(host, device)
    out.block_until_ready()  # the host buffer may be freed once this returns
    return out


def _check_finite(values: np.ndarray, name: str, source: str) -> None:
    floating = values.dtype.kind in "fc" or values.dtype.name.startswith(("bfloat", "float8"))
    if floating and not np.all(
        np.isfinite(values.astype(np.float32) if values.dtype.kind != "c" else values)
    ):
        raise NonFiniteError(f"{source}: parameter {name!r} contains NaN or Inf.")


def _put_region(tensor: LazyTensor, index: Index, device: Any, dtype: Any, name: str) -> jax.Array:
    """Read `index` of `tensor` into a new array on `device`, CHUNK_BYTES of file at a time.

    The values go straight into an aligned host buffer of the final dtype, which becomes the
    device array (adopted without a copy on CPU). Host memory is the parameter plus a chunk.
    """
    shape = tuple(len(range(*s.indices(n))) for s, n in zip(index, tensor.shape, strict=True))
    host = aligned_empty(shape, dtype)
    first = index[0].indices(tensor.shape[0])[0] if shape else 0
    row_bytes = math.prod(shape[1:]) * max(np.dtype(dtype).itemsize, tensor.dtype.itemsize)
    rows = max(1, CHUNK_BYTES // max(row_bytes, 1))
    for start in range(0, shape[0] if shape else 1, rows):
        if not shape:
            values = tensor.read(index)
            _check_finite(values, name, tensor.source)
            host[...] = values
            break
        stop = min(start + rows, shape[0])
        values = tensor.read((slice(first + start, first + stop), *index[1:]))
        _check_finite(values, name, tensor.source)
        host[start:stop] = values
        del values
    return _adopt(host, device)


def place(
    tensor: Any, name: str, dtype: Any, sharding: jax.sharding.Sharding | None = None
) -> jax.Array:
    """Build one parameter on device(s): each addressable shard is read straight from `tensor`."""
    tensor = as_lazy(tensor, name) if not isinstance(tensor, LazyTensor) else tensor
    if sharding is None:
        return _put_region(tensor, _full_index(tensor.shape), jax.devices()[0], dtype, name)
    index_map = sharding.addressable_devices_indices_map(tensor.shape)
    built: dict[tuple, jax.Array] = {}
    shards = []
    for device, index in index_map.items():
        index = tuple(
            slice(*s.indices(n)[:2])
            for s, n in zip(index or _full_index(tensor.shape), tensor.shape, strict=True)
        )
        key = tuple((s.start, s.stop) for s in index)
        if key in built:  # replicated: copy the shard already read to this device
            shards.append(jax.device_put(built[key], device))
        else:
            built[key] = _put_region(tensor, index, device, dtype, name)
            shards.append(built[key])
    return jax.make_array_from_single_device_arrays(tensor.shape, sharding, shards)


def to_device(
    params: Mapping[str, Any],
    dtypes: Mapping[str, Any],
    shardings: Mapping[str, jax.sharding.Sharding] | None = None,
) -> dict[str, jax.Array]:
    """Place every parameter (dtype per name; sharding per name, or the default device)."""
    out = {}
    for name, value in params.items():
        if isinstance(value, jax.Array) and shardings is None:
            out[name] = value.astype(dtypes[name])
            continue
        out[name] = place(value, name, dtypes[name], None if shardings is None else shardings[name])
    return out


__all__ = [
    "CHUNK_BYTES",
    "LazyTensor",
    "as_lazy",
    "npz_tensors",
    "place",
    "safetensors_tensors",
    "shape_of",
    "to_device",
]
