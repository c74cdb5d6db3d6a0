"""CIFAR-10 / CIFAR-100 "python version" batches (Krizhevsky, 2009), read through a restricted
unpickler: the batches are pickles, and a pickle can run any code on load, so only the
builtins and numpy reconstruction types a batch needs are admitted."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import torch

from pytransfer.data.classification import ClassificationData

#: (module, name) pairs a CIFAR batch may reference; everything else is refused
ALLOWED_GLOBALS = frozenset({
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),  # arrays pickled at protocol 5
    ("numpy._core.numeric", "_frombuffer"),
    *(("builtins", n) for n in ("bytearray", "bytes", "complex", "dict", "float", "frozenset",
                                "int", "list", "set", "str", "tuple")),
})


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler whose ``find_class`` admits only :data:`ALLOWED_GLOBALS`: a pickle naming
    any other callable (``os.system``, ``builtins.eval``, ...) raises UnpicklingError before
    it can be called."""

    def find_class(self, module: str, name: str):
        if (module, name) == ("_codecs", "encode"):  # bytes pickled by Python 3, protocol < 3
            return _latin1_encode
        if (module, name) not in ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays "
                                         "and plain builtins are allowed in a CIFAR batch")
        return super().find_class(module, name)


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def safe_unpickle(path: str | Path) -> object:
    """The object in a pickle file, loaded by :class:`RestrictedUnpickler` (Python 2 pickles
    as the CIFAR site ships them: strings stay bytes). ValueError naming the file when it is
    not a pickle or references anything not allowed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pickle file not found: {path}")
    data = path.read_bytes()
    try:
        return RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, ImportError) as exc:
        raise ValueError(f"{path}: not a safe CIFAR pickle ({exc})") from None


def _get(d: dict, key: str):
    for k in (key.encode(), key):
        if k in d:
            return d[k]
    return None


def _text(v) -> str:
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def read_batch(path: str | Path, label_key: str = "labels") -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, 3, 32, 32) and int64 labels (N,) of one batch file (a dict with
    ``data`` (N, 3072) uint8, rows R then G then B planes, and ``label_key``)."""
    d = safe_unpickle(path)
    if not isinstance(d, dict):
        raise ValueError(f"{path}: a CIFAR batch is a dict, got {type(d).__name__}")
    data, labels = _get(d, "data"), _get(d, label_key)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: 'data' must be a (N, 3072) uint8 array, got "
                         f"{getattr(data, 'dtype', type(data).__name__)} "
                         f"{getattr(data, 'shape', '')}")
    try:
        y = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError):
        y = None
    if y is None or y.ndim != 1 or y.shape[0] != data.shape[0]:
        raise ValueError(f"{path}: {label_key!r} must list {data.shape[0]} integer labels")
    return data.reshape(-1, 3, 32, 32), y


def _names(meta_path: Path, key: str, count: int) -> list[str]:
    if not meta_path.is_file():
        return [str(i) for i in range(count)]
    meta = safe_unpickle(meta_path)
    names = _get(meta, key) if isinstance(meta, dict) else None
    if not isinstance(names, list) or len(names) != count:
        raise ValueError(f"{meta_path}: {key!r} must list {count} class names")
    return [_text(n) for n in names]


def _assemble(files: list[Path], label_key: str, classes: list[str]) -> ClassificationData:
    xs, ys = zip(*(read_batch(f, label_key) for f in files))
    y = np.concatenate(ys)
    if y.size and (y.min() < 0 or y.max() >= len(classes)):
        raise ValueError(f"{files[0].parent}: labels outside [0, {len(classes)})")
    x = torch.from_numpy(np.concatenate(xs)).float().div_(255.0)
    return ClassificationData(x, torch.from_numpy(y), classes)


def load_cifar10(path: str | Path) -> ClassificationData:
    """CIFAR-10: ``path`` is the ``cifar-10-batches-py`` folder (every ``data_batch_*`` then
    ``test_batch``; names from ``batches.meta``) or one batch file. x (N, 3, 32, 32) in [0, 1]."""
    path = Path(path)
    if path.is_file():
        return _assemble([path], "labels", _names(path.parent / "batches.meta", "label_names", 10))
    if not path.is_dir():
        raise FileNotFoundError(f"CIFAR-10 folder or batch not found: {path}")
    files = sorted(path.glob("data_batch_*")) + sorted(path.glob("test_batch"))
    if not files:
        raise FileNotFoundError(f"{path} holds no data_batch_* or test_batch (CIFAR-10 python "
                                "batches expected)")
    return _assemble(files, "labels", _names(path / "batches.meta", "label_names", 10))


def load_cifar100(path: str | Path, label: str = "fine") -> ClassificationData:
    """CIFAR-100: ``path`` is the ``cifar-100-python`` folder (``train`` then ``test``; names
    from ``meta``) or one of those files; ``label``: "fine" (100 classes) or "coarse" (20)."""
    if label not in ("fine", "coarse"):
        raise ValueError(f"label must be 'fine' or 'coarse', got {label!r}")
    count, key = (100, "fine_label_names") if label == "fine" else (20, "coarse_label_names")
    path = Path(path)
    if path.is_file():
        files, meta = [path], path.parent / "meta"
    elif path.is_dir():
        files = [path / n for n in ("train", "test") if (path / n).is_file()]
        if not files:
            raise FileNotFoundError(f"{path} holds no train or test file (CIFAR-100 python "
                                    "version expected)")
        meta = path / "meta"
    else:
        raise FileNotFoundError(f"CIFAR-100 folder or file not found: {path}")
    return _assemble(files, f"{label}_labels", _names(meta, key, count))
