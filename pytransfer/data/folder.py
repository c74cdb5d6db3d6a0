"""Class-per-folder image trees (notMNIST, FGVC-Aircraft arranged by variant, ImageNet-style):
``root/<class name>/<image>``, read with Pillow."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pytransfer.data.classification import ClassificationData

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".tif",
                            ".tiff", ".webp"})
_GREY = frozenset({"1", "L", "LA"})


def load_folder(root: str | Path, size: tuple[int, int] | None = None, *,
                skip_unreadable: bool = False) -> ClassificationData:
    """Every image under ``root/<class>/`` (classes are the sub-folder names, sorted; files
    with other suffixes and hidden files are ignored). x (N, C, H, W) = pixel / 255 in float32,
    C = 1 when every image is greyscale, else 3 (RGB). ``size`` (H, W): resize each image
    (bilinear); without it every image must have one size. A file Pillow cannot decode is an
    error naming it, or is skipped with ``skip_unreadable`` (notMNIST ships a few)."""
    from PIL import Image, UnidentifiedImageError

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ValueError(f"{root} has no class sub-folders (expected root/<class>/<image>)")
    images, labels, modes = [], [], set()
    for label, name in enumerate(classes):
        files = sorted(p for p in (root / name).iterdir() if p.is_file()
                       and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"class folder {root / name} holds no images "
                             f"({', '.join(sorted(IMAGE_SUFFIXES))})")
        for f in files:
            try:
                with Image.open(f) as im:
                    im.load()
                    img = im.copy()
            except (OSError, UnidentifiedImageError, ValueError) as exc:
                if skip_unreadable:
                    continue
                raise ValueError(f"cannot read image {f} ({exc}); remove it or pass "
                                 "skip_unreadable=True") from None
            if img.mode.startswith(("I", "F")):
                raise ValueError(f"{f}: {img.mode} (16/32-bit) images are not supported, only "
                                 "8-bit greyscale or colour")
            if size is not None:
                img = img.resize((size[1], size[0]), Image.BILINEAR)
            images.append((f, img))
            labels.append(label)
            modes.add(img.mode)
    if not images:
        raise ValueError(f"{root}: no readable image")
    mode = "L" if modes <= _GREY else "RGB"
    sizes = {img.size for _, img in images}
    if len(sizes) > 1:
        (f0, i0), (f1, i1) = images[0], next(p for p in images if p[1].size != images[0][1].size)
        raise ValueError(f"images differ in size ({f0}: {i0.size[1]}x{i0.size[0]}, {f1}: "
                         f"{i1.size[1]}x{i1.size[0]}); pass size=(H, W) to resize")
    arrays = [np.asarray(img.convert(mode), dtype=np.uint8) for _, img in images]
    x = torch.from_numpy(np.stack(arrays))
    x = x.unsqueeze(1) if mode == "L" else x.permute(0, 3, 1, 2)
    return ClassificationData(x.float().div_(255.0).contiguous(),
                              torch.tensor(labels, dtype=torch.int64), classes)
