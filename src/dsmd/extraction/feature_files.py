"""Reading feature arrays from files written by other programs (for :mod:`dsmd.extraction.importer`).

Formats, by extension: ``.npy`` (memory-mapped), ``.npz``, ``.pt``/``.pth``
(``torch.load(weights_only=True, mmap=True)``), ``.safetensors`` (read a block of rows at a
time), ``.pkl``/``.pickle`` (only with ``trust_pickle``: unpickling runs code from the file).
A file's arrays are its *entries*, named by key; nested dicts are flattened with ``/``
(``{"train": {"image": x}}`` is entry ``train/image``), and a file that is one array has the
single entry ``""``.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dsmd.errors import DsmdError

EXTENSIONS = (".npy", ".npz", ".pt", ".pth", ".safetensors", ".pkl", ".pickle")
_FLOAT_SAFETENSORS = {"F16", "BF16", "F32", "F64"}


@dataclass
class SourceArray:
    """One ``(N, D)`` entry of a source file, read a block of rows at a time.

    ``data`` is a numpy array (possibly memory-mapped), a torch tensor, or a safetensors slice.
    """

    file: Path
    key: str
    data: Any

    @property
    def where(self) -> str:
        return f"{self.file}" + (f" (entry '{self.key}')" if self.key else "")

    @property
    def shape(self) -> tuple[int, ...]:
        if hasattr(self.data, "get_shape"):
            return tuple(self.data.get_shape())
        return tuple(self.data.shape)

    @property
    def dtype(self) -> str:
        if hasattr(self.data, "get_dtype"):
            return {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64"}.get(
                self.data.get_dtype(), self.data.get_dtype()
            )
        if isinstance(self.data, torch.Tensor):
            return str(self.data.dtype).removeprefix("torch.")
        return str(self.data.dtype)

    def is_float(self) -> bool:
        if hasattr(self.data, "get_dtype"):
            return self.data.get_dtype() in _FLOAT_SAFETENSORS
        if isinstance(self.data, torch.Tensor):
            return self.data.is_floating_point()
        return self.data.dtype.kind == "f"

    def block(self, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` as a float32 CPU tensor of shape ``(stop - start, D)``."""
        rows = self.data[start:stop]
        if isinstance(rows, np.ndarray):  # a copy: memory-mapped pages are read-only
            return torch.from_numpy(np.array(rows, dtype=np.float32))
        return rows.to(device="cpu", dtype=torch.float32)


class _CpuUnpickler(pickle.Unpickler):
    """Unpickles torch tensors saved on a GPU onto the CPU (``pickle.load`` would need CUDA)."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch.storage" and name == "_load_from_bytes":
            return lambda b: torch.load(io.BytesIO(b), map_location="cpu", weights_only=False)
        return super().find_class(module, name)


def _as_array(obj: Any) -> Any:
    """An array from a tensor, an array or a list of rows (None for anything else)."""
    if isinstance(obj, torch.Tensor | np.ndarray):
        return obj
    if isinstance(obj, list | tuple) and obj:
        if all(isinstance(x, torch.Tensor) for x in obj):
            return torch.stack([x.cpu() for x in obj])
        try:
            arr = np.asarray(obj)
        except ValueError:  # ragged
            return None
        return arr if arr.dtype.kind in "fiub" else None
    return None


def _flatten(obj: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(obj, dict):
        for key, value in obj.items():
            _flatten(value, f"{prefix}/{key}" if prefix else str(key), out)
        return
    arr = _as_array(obj)
    if arr is not None:
        out[prefix] = arr


def _pickle_refused(file: Path) -> DsmdError:
    return DsmdError(
        f"{file} is a pickle: reading it runs code stored in the file. If you trust its source, "
        "pass --trust-pickle (trust_pickle=True); or re-save the features as .npy or .safetensors."
    )


def _torch_load(file: Path, trust_pickle: bool) -> Any:
    # Legacy (non-zip) files cannot be memory-mapped; anything but tensors needs full unpickling.
    for mmap in (True, False):
        try:
            return torch.load(file, map_location="cpu", weights_only=True, mmap=mmap)
        except pickle.UnpicklingError:
            if not trust_pickle:
                raise _pickle_refused(file) from None
            return torch.load(file, map_location="cpu", weights_only=False, mmap=mmap)
        except RuntimeError as exc:
            if not mmap or "mmap" not in str(exc):
                raise
    raise AssertionError("unreachable")


def read_entries(file: str | Path, trust_pickle: bool = False) -> dict[str, Callable[[], Any]]:
    """The arrays in ``file``, by entry name (``""`` for a file that is one array), unread.

    Each value is a function returning the array (numpy, torch or a safetensors slice), so
    that only the entries used are read.

    Raises:
        DsmdError: the file is missing, unreadable, of an unknown format, or a pickle without
            ``trust_pickle``.
    """
    file = Path(file)
    suffix = file.suffix.lower()
    if not file.is_file():
        raise DsmdError(f"feature file not found: {file}.")
    if suffix not in EXTENSIONS:
        raise DsmdError(f"{file}: unknown feature file format '{suffix}'. Use one of {', '.join(EXTENSIONS)}.")
    try:
        if suffix == ".npy":
            arr = np.load(file, mmap_mode="r", allow_pickle=False)
            return {"": lambda: arr}
        if suffix == ".npz":
            npz = np.load(file, allow_pickle=False)
            return {key: (lambda k=key: npz[k]) for key in npz.files}
        if suffix == ".safetensors":
            from safetensors import safe_open

            handle = safe_open(str(file), framework="pt")
            return {key: (lambda k=key: handle.get_slice(k)) for key in handle.keys()}
        if suffix in (".pt", ".pth"):
            obj = _torch_load(file, trust_pickle)
        else:
            if not trust_pickle:
                raise _pickle_refused(file)
            with file.open("rb") as f:
                obj = _CpuUnpickler(f).load()
    except DsmdError:
        raise
    except Exception as exc:  # each format raises its own types; all mean "cannot read"
        raise DsmdError(f"cannot read {file} ({type(exc).__name__}: {exc}).") from exc
    out: dict[str, Any] = {}
    _flatten(obj, "", out)
    return {key: (lambda v=value: v) for key, value in out.items()}
