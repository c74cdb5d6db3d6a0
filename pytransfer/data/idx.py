"""MNIST-style IDX files (raw or gzip): the format of LeCun et al.'s MNIST distribution."""

from __future__ import annotations

import gzip
import math
import struct
from pathlib import Path

import numpy as np
import torch

from pytransfer.data.classification import ClassificationData

#: IDX type byte -> big-endian numpy dtype
IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_GZIP_MAGIC = b"\x1f\x8b"


def read_idx(path: str | Path) -> np.ndarray:
    """The array in an IDX file (gzip detected by its magic bytes, not the name). Checks the
    magic (two zero bytes, a known type byte, 1 <= ndim), and that the data length is exactly
    prod(dims) * itemsize; raises ValueError naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file not found: {path}")
    with open(path, "rb") as f:
        gz = f.read(2) == _GZIP_MAGIC
    try:
        with (gzip.open(path, "rb") if gz else open(path, "rb")) as f:
            head = f.read(4)
            if len(head) < 4 or head[:2] != b"\x00\x00" or head[2] not in IDX_DTYPES \
                    or head[3] == 0:
                raise ValueError(f"{path} is not an IDX file (bad magic {head.hex() or 'empty'})")
            ndim = head[3]
            raw_dims = f.read(4 * ndim)
            if len(raw_dims) < 4 * ndim:
                raise ValueError(f"{path}: IDX header truncated ({ndim} dimensions announced)")
            dims = struct.unpack(f">{ndim}I", raw_dims)
            dtype = np.dtype(IDX_DTYPES[head[2]])
            size = math.prod(dims) * dtype.itemsize
            body = _read_at_most(f, size + 1)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise ValueError(f"{path}: cannot read the IDX data ({exc})") from None
    if len(body) != size:
        raise ValueError(f"{path}: IDX header announces dims {dims} ({size} bytes of data), "
                         f"the file holds {'more' if len(body) > size else len(body)}")
    return np.frombuffer(body, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="))


def _read_at_most(f, limit: int, chunk: int = 1 << 24) -> bytes:
    """Up to ``limit`` bytes, in chunks: a header announcing a huge size allocates nothing."""
    parts, got = [], 0
    while got < limit:
        part = f.read(min(chunk, limit - got))
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def _find(root: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"),
                 stem.replace("-idx", ".idx") + ".gz"):
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(f"{root} holds no {stem}[.gz] (MNIST IDX files expected)")


def idx_pair(images: str | Path, labels: str | Path,
             classes: list[str] | None = None) -> ClassificationData:
    """Images (N, H, W) uint8 and labels (N,) from two IDX files: x (N, 1, H, W) = pixel / 255
    in float32, y int64, classes "0".."9" unless given."""
    x, y = read_idx(images), read_idx(labels)
    if x.ndim != 3 or x.dtype != np.uint8:
        raise ValueError(f"{images}: expected (N, H, W) uint8 images, got {x.dtype} {x.shape}")
    if y.ndim != 1 or y.dtype != np.uint8 or y.shape[0] != x.shape[0]:
        raise ValueError(f"{labels}: expected ({x.shape[0]},) uint8 labels for {images}, got "
                         f"{y.dtype} {y.shape}")
    classes = classes or [str(c) for c in range(max(10, int(y.max(initial=0)) + 1))]
    return ClassificationData(torch.from_numpy(x).unsqueeze(1).float().div_(255.0),
                              torch.from_numpy(y.astype(np.int64)), classes)


def load_mnist(root: str | Path, part: str = "all") -> ClassificationData:
    """MNIST (or Fashion-MNIST, KMNIST: same file names) from a folder holding
    ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
    ``t10k-labels-idx1-ubyte`` (each raw or .gz). ``part``: "train", "test" (t10k) or "all"
    (train then test; :func:`pytransfer.data.split` then draws its own seeded test split)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"MNIST folder not found: {root}")
    parts = {"train": ["train"], "test": ["t10k"], "all": ["train", "t10k"]}
    if part not in parts:
        raise ValueError(f"part must be one of {tuple(parts)}, got {part!r}")
    pieces = [idx_pair(_find(root, f"{p}-images-idx3-ubyte"), _find(root, f"{p}-labels-idx1-ubyte"))
              for p in parts[part]]
    if len({d.x.shape[1:] for d in pieces}) > 1:
        raise ValueError(f"{root}: train and t10k images differ in size")
    return ClassificationData(torch.cat([d.x for d in pieces]), torch.cat([d.y for d in pieces]),
                              max((d.classes for d in pieces), key=len))
