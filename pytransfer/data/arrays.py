"""Feature arrays in ``.npy`` / ``.npz`` files, loaded with ``allow_pickle=False`` (an object
array, whose loading could run code, is refused)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from pytransfer.data.classification import ClassificationData


def read_npy(path: str | Path) -> np.ndarray:
    """The array in a ``.npy`` file. FileNotFoundError or ValueError naming the file when it
    is missing, empty, not a .npy array, truncated or holds Python objects."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such .npy file: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is empty (not a .npy array)")
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, EOFError, OSError) as exc:
        raise ValueError(f"{path}: not a readable .npy array ({str(exc).splitlines()[0]})") \
            from None
    if not isinstance(arr, np.ndarray):
        raise ValueError(f"{path} is an .npz archive, not a .npy array")
    return arr


def features(arr: np.ndarray, name: str) -> torch.Tensor:
    """A finite real (N, ...) array as float32, N >= 1; ValueError naming ``name`` otherwise."""
    if arr.dtype.kind not in "biuf" or arr.ndim < 1 or arr.shape[0] == 0:
        raise ValueError(f"{name}: expected a non-empty numeric (N, ...) array, got {arr.dtype} "
                         f"{arr.shape}")
    x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or Inf")
    return x


def labels(arr: np.ndarray, name: str) -> torch.Tensor:
    """Non-negative integer labels (N,) as int64; ValueError naming ``name`` otherwise."""
    if arr.ndim != 1 or arr.shape[0] == 0:
        raise ValueError(f"{name}: labels must be a non-empty (N,) array, got shape {arr.shape}")
    if arr.dtype.kind == "f" and np.isfinite(arr).all() and (arr == np.round(arr)).all():
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "biu":
        raise ValueError(f"{name}: labels must be integers, got {arr.dtype}")
    if arr.min() < 0:
        raise ValueError(f"{name}: labels must be >= 0, got {arr.min()}")
    return torch.from_numpy(arr.astype(np.int64))


def arrays_data(x: np.ndarray, y: np.ndarray, classes=None, *,
                name: str = "arrays") -> ClassificationData:
    """ClassificationData from a feature array and a label array; ``classes`` (names) default
    to "0".."max label"."""
    xt, yt = features(x, f"{name} x"), labels(y, f"{name} y")
    if xt.shape[0] != yt.shape[0]:
        raise ValueError(f"{name}: x has {xt.shape[0]} rows, y {yt.shape[0]} labels")
    k = int(yt.max()) + 1
    if classes is None:
        classes = [str(c) for c in range(k)]
    else:
        classes = [str(c) for c in np.asarray(classes).reshape(-1).tolist()]
        if len(classes) < k:
            raise ValueError(f"{name}: {len(classes)} class names for labels up to {k - 1}")
    return ClassificationData(xt, yt, classes)


def load_npy(x_path: str | Path, y_path: str | Path) -> ClassificationData:
    """Features (N, ...) and labels (N,) from two ``.npy`` files."""
    return arrays_data(read_npy(x_path), read_npy(y_path), name=f"{x_path}, {y_path}")


def load_npz(path: str | Path) -> ClassificationData:
    """An ``.npz`` archive holding ``x`` (N, ...) features, ``y`` (N,) integer labels and
    optionally ``classes`` (a string array of names)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such .npz file: {path}")
    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise ValueError("a .npy array, not an .npz archive")
        with z:
            missing = {"x", "y"} - set(z.files)
            if missing:
                raise ValueError(f"needs arrays 'x' and 'y', has {sorted(z.files)}")
            arrays = {k: z[k] for k in ("x", "y", "classes") if k in z.files}
    except (ValueError, EOFError, OSError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path}: not a usable .npz ({str(exc).splitlines()[0]})") from None
    return arrays_data(arrays["x"], arrays["y"], arrays.get("classes"), name=str(path))
