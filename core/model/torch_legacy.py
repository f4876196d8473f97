"""A PyTorch state dict in the legacy (pre-1.6) file format, read without torch: only tensors, storages and OrderedDict are unpickled."""
from __future__ import annotations

import collections
import io
import os
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["read_torch_legacy"]

_STORAGE_DTYPES = {"FloatStorage": "<f4", "DoubleStorage": "<f8", "HalfStorage": "<f2", "LongStorage": "<i8",
                   "IntStorage": "<i4", "ShortStorage": "<i2", "CharStorage": "i1", "ByteStorage": "u1",
                   "BoolStorage": "?"}


@dataclass(frozen=True)
class _TensorRef:
    storage_key: str
    dtype: str
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor_v2(storage, offset, size, stride, *_):
    # storage is the persistent id: ('storage', storage type, key, location, element count, view metadata)
    return _TensorRef(str(storage[2]), _STORAGE_DTYPES[storage[1]], int(offset), tuple(size), tuple(stride))


class _StateDictUnpickler(pickle.Unpickler):
    """Unpickles a legacy PyTorch state dict into tensor references, allowing only what such a file holds."""

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return name
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a PyTorch state dict; refusing to load it")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage" and pid[1] in _STORAGE_DTYPES):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        return pid


def read_torch_legacy(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a PyTorch state dict saved in the legacy (pre-1.6, non-zip) format, without torch.

    The file is a magic number, the protocol version, a sys-info dict, the pickled state dict (tensors
    as ``_rebuild_tensor_v2`` calls on persistent storage ids), the list of storage keys, and then per
    storage an int64 element count and its raw little-endian bytes (``torch/serialization.py``,
    ``_legacy_save``). Only ``OrderedDict``, tensors and storages are unpickled.

    Returns:
        Parameter name → array, in the file's order and with the tensors' strides applied.

    Raises:
        ValueError: the file is not such a state dict, or is truncated.
    """
    name = Path(path).name
    f = io.BytesIO(Path(path).read_bytes())
    try:
        magic, protocol = pickle.load(f), pickle.load(f)
        if magic != 0x1950A86A20F9469CFC6C or protocol != 1001:
            raise ValueError(f"{name} is not a legacy PyTorch file")
        if not pickle.load(f).get("little_endian", False):
            raise ValueError(f"{name} was saved big-endian")
        state = _StateDictUnpickler(f).load()
        keys = pickle.load(f)
        refs = {ref.storage_key: ref for ref in state.values() if isinstance(ref, _TensorRef)}
        storages = {}
        for key in keys:
            (count,) = struct.unpack("<q", f.read(8))
            dtype = np.dtype(refs[str(key)].dtype)
            raw = f.read(count * dtype.itemsize)
            if len(raw) != count * dtype.itemsize:
                raise ValueError(f"{name} is truncated")
            storages[str(key)] = np.frombuffer(raw, dtype)
    except (pickle.UnpicklingError, EOFError, struct.error, KeyError, AttributeError, TypeError) as exc:
        raise ValueError(f"{name} is not a readable PyTorch state dict: {exc}") from exc
    out = {}
    for key, ref in state.items():
        if not isinstance(ref, _TensorRef):
            raise ValueError(f"{name}: {key} is not a tensor")
        storage = storages[ref.storage_key]
        needed = ref.offset + 1 + sum((n - 1) * s for n, s in zip(ref.size, ref.stride))
        if ref.size and min(ref.size) > 0 and needed > storage.size:
            raise ValueError(f"{name}: {key} reaches past its storage")
        out[key] = np.lib.stride_tricks.as_strided(
            storage[ref.offset:], ref.size, tuple(s * storage.itemsize for s in ref.stride)).copy()
    return out
