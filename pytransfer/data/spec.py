"""``--data`` spec strings: one string names a data set on the local disk."""

from __future__ import annotations

import re
from pathlib import Path

from pytransfer.data.classification import ClassificationData

SPEC_HELP = ("digits | mnist:PATH | cifar10:PATH | cifar100:PATH[:classes] | folder:PATH[:HxW] | "
             "npz:PATH")


def load_digits_data() -> ClassificationData:
    """scikit-learn's 8x8 digits (1797 images, shipped inside scikit-learn): x (N, 1, 8, 8) =
    pixel / 16, classes "0".."9"."""
    import torch
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return ClassificationData(torch.as_tensor(x / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8),
                              torch.as_tensor(y, dtype=torch.int64), [str(c) for c in range(10)])


def _path(kind: str, rest: str) -> Path:
    if not rest:
        raise ValueError(f"data spec {kind}: needs a path ({kind}:PATH)")
    path = Path(rest).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"data spec {kind}:{rest}: no such file or folder: {path}")
    return path


def _suffix(rest: str) -> tuple[str, str | None]:
    """PATH and the text after its last colon, unless PATH with that colon exists as a path."""
    if rest and not Path(rest).expanduser().exists() and ":" in rest:
        path, _, tail = rest.rpartition(":")
        return path, tail
    return rest, None


def load_spec(spec: str) -> ClassificationData:
    """The data set a spec string names (nothing is downloaded):

    - ``digits``: :func:`load_digits_data`;
    - ``mnist:PATH``: a folder of MNIST IDX files, train then t10k (:func:`load_mnist`);
    - ``cifar10:PATH``: ``cifar-10-batches-py`` or one batch file (:func:`load_cifar10`);
    - ``cifar100:PATH[:classes]``: ``cifar-100-python`` or one of its files, fine labels;
      ``classes`` a comma list of class names or indices keeps only those, relabelled 0..k-1
      in that order (:func:`load_cifar100`, :meth:`ClassificationData.select_classes`);
    - ``folder:PATH[:HxW]``: a class-per-folder image tree (:func:`load_folder`), every image
      resized to H x W when given (FGVC-Aircraft's images differ in size);
    - ``npz:PATH``: an ``.npz`` with ``x``, ``y`` (and optionally ``classes``) (:func:`load_npz`).

    ValueError for an unknown kind or a file in the wrong format, FileNotFoundError for a
    missing path; each message names the spec.
    """
    from pytransfer.data import arrays, cifar, folder, idx

    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"empty data spec; expected {SPEC_HELP}")
    kind, _, rest = spec.strip().partition(":")
    if kind == "digits":
        if rest:
            raise ValueError(f"data spec {spec!r}: digits takes no path")
        return load_digits_data()
    if kind == "cifar100":
        rest, classes = _suffix(rest)
        data = cifar.load_cifar100(_path(kind, rest))
        if classes is not None:
            data = data.select_classes([c.strip() for c in classes.split(",") if c.strip()])
        return data
    if kind == "folder":
        rest, size = _suffix(rest)
        if size is not None and not re.fullmatch(r"[1-9]\d*x[1-9]\d*", size):
            raise ValueError(f"data spec {spec!r}: the size after the path must be HxW, e.g. "
                             f"64x64, got {size!r}")
        hw = None if size is None else tuple(int(v) for v in size.split("x"))
        return folder.load_folder(_path(kind, rest), hw)
    readers = {"mnist": idx.load_mnist, "cifar10": cifar.load_cifar10, "npz": arrays.load_npz}
    if kind not in readers:
        raise ValueError(f"unknown data spec {spec!r}; expected {SPEC_HELP}")
    return readers[kind](_path(kind, rest))
