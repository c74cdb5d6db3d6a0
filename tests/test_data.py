"""pytransfer.data: every reader on tiny files written here (values round-trip exactly against
the raw bytes, indexed independently), the restricted CIFAR unpickler against live payloads,
seeded splits and the spec parser."""

import gzip
import os
import pickle
import struct

import numpy as np
import pytest
import torch

from pytransfer.data import (
    ClassificationData,
    load_cifar10,
    load_cifar100,
    load_folder,
    load_mnist,
    load_npy,
    load_npz,
    load_spec,
    read_idx,
    read_npy,
    split,
)


def _idx_bytes(arr: np.ndarray, code: int) -> bytes:
    head = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return head + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def _write(path, data: bytes, gz: bool = False):
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


@pytest.fixture
def mnist_dir(tmp_path):
    rng = np.random.default_rng(0)
    imgs = {p: rng.integers(0, 256, size=(n, 5, 3), dtype=np.uint8) for p, n in
            (("train", 7), ("t10k", 4))}
    labs = {p: rng.integers(0, 10, size=len(imgs[p]), dtype=np.uint8) for p in imgs}
    for p, gz in (("train", False), ("t10k", True)):
        sfx = ".gz" if gz else ""
        _write(tmp_path / f"{p}-images-idx3-ubyte{sfx}", _idx_bytes(imgs[p], 0x08), gz)
        _write(tmp_path / f"{p}-labels-idx1-ubyte{sfx}", _idx_bytes(labs[p], 0x08), gz)
    return tmp_path, imgs, labs


def test_mnist_raw_and_gz_round_trip(mnist_dir):
    root, imgs, labs = mnist_dir
    d = load_mnist(root)
    raw = np.concatenate([imgs["train"], imgs["t10k"]])
    assert d.x.dtype == torch.float32 and d.x.shape == (11, 1, 5, 3)
    assert torch.equal((d.x * 255).round().to(torch.uint8)[:, 0], torch.from_numpy(raw))
    assert d.y.tolist() == np.concatenate([labs["train"], labs["t10k"]]).tolist()
    assert d.classes == [str(c) for c in range(10)]
    test = load_mnist(root, part="test")
    assert torch.equal(test.x, d.x[7:]) and len(test) == 4


@pytest.mark.parametrize(("dtype", "code"), [(np.int32, 0x0C), (np.float64, 0x0E),
                                             (np.int16, 0x0B), (np.int8, 0x09)])
def test_read_idx_types(tmp_path, dtype, code):
    arr = (np.arange(24).reshape(2, 3, 4) - 7).astype(dtype)
    out = read_idx(_write(tmp_path / "a", _idx_bytes(arr, code), gz=True))
    assert out.dtype == np.dtype(dtype) and np.array_equal(out, arr)


@pytest.mark.parametrize(("data", "match"), [
    (b"", "bad magic empty"),
    (b"\x00\x01\x08\x01\x00\x00\x00\x02ab", "bad magic"),
    (b"\x00\x00\x07\x01\x00\x00\x00\x02ab", "bad magic"),
    (b"\x00\x00\x08\x03\x00\x00\x00\x02", "header truncated"),
    (b"\x00\x00\x08\x01\x00\x00\x00\x03ab", "holds 2"),
    (b"\x00\x00\x08\x01\x00\x00\x00\x02abc", "holds more"),
    (b"\x00\x00\x0c\x02\xff\xff\xff\xff\xff\xff\xff\xff", "holds 0"),
])
@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_rejects(tmp_path, data, match, gz):
    path = _write(tmp_path / "bad-idx", data, gz)
    with pytest.raises(ValueError, match=match) as err:
        read_idx(path)
    assert "bad-idx" in str(err.value)


def test_read_idx_corrupt_gzip_and_missing(tmp_path):
    with pytest.raises(ValueError, match="cannot read"):
        read_idx(_write(tmp_path / "x.gz", b"\x1f\x8b\x08garbage"))
    with pytest.raises(FileNotFoundError, match="nope"):
        read_idx(tmp_path / "nope")


def test_mnist_mismatched_labels_and_missing_files(mnist_dir):
    root, _, _ = mnist_dir
    _write(root / "train-labels-idx1-ubyte", _idx_bytes(np.zeros(6, np.uint8), 0x08))
    with pytest.raises(ValueError, match=r"expected \(7,\) uint8 labels"):
        load_mnist(root)
    (root / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte"):
        load_mnist(root, part="test")


# --- CIFAR -----------------------------------------------------------------------------------

def _cifar_batch(n, seed, key="labels", k=10, protocol=2):
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = rng.integers(0, k, size=n).tolist()
    batch = {b"batch_label": b"fake", b"data": data, key.encode(): labels,
             b"filenames": [f"img{i}.png".encode() for i in range(n)]}
    if key == "fine_labels":
        batch[b"coarse_labels"] = [c // 5 for c in labels]
    return pickle.dumps(batch, protocol=protocol), data, labels


def _pixel(data, n, c, i, j):
    return data[n, c * 1024 + i * 32 + j]  # CIFAR row layout: R plane, G plane, B plane


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar10_folder_round_trip(tmp_path, protocol):
    raws = []
    for name, n, seed in (("data_batch_1", 3, 0), ("data_batch_2", 2, 1), ("test_batch", 2, 2)):
        blob, data, labels = _cifar_batch(n, seed, protocol=protocol)
        (tmp_path / name).write_bytes(blob)
        raws.append((data, labels))
    names = [f"class{i}".encode() for i in range(10)]
    (tmp_path / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}, protocol=2))
    d = load_cifar10(tmp_path)
    data = np.concatenate([r[0] for r in raws])
    assert d.x.shape == (7, 3, 32, 32) and d.classes == [f"class{i}" for i in range(10)]
    assert d.y.tolist() == [v for r in raws for v in r[1]]
    for n, c, i, j in [(0, 0, 0, 0), (1, 2, 31, 5), (4, 1, 7, 30), (6, 2, 31, 31)]:
        assert float(d.x[n, c, i, j]) * 255 == pytest.approx(float(_pixel(data, n, c, i, j)),
                                                            abs=1e-4)
    assert torch.equal((d.x * 255).round().to(torch.uint8).reshape(7, -1),
                       torch.from_numpy(data))
    one = load_cifar10(tmp_path / "test_batch")
    assert torch.equal(one.x, d.x[5:]) and one.classes == d.classes


def test_cifar_batch_pickled_by_numpy_1(tmp_path):
    """numpy < 2 names its reconstructor numpy.core.multiarray (the CIFAR files' numpy)."""
    blob, data, labels = _cifar_batch(3, 5, protocol=2)
    legacy = blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert legacy != blob
    (tmp_path / "data_batch_1").write_bytes(legacy)
    d = load_cifar10(tmp_path / "data_batch_1")
    assert torch.equal((d.x * 255).round().to(torch.uint8).reshape(3, -1), torch.from_numpy(data))
    assert d.y.tolist() == labels and d.classes == [str(i) for i in range(10)]


def test_cifar100_fine_coarse_and_class_spec(tmp_path):
    blob, _, labels = _cifar_batch(12, 3, key="fine_labels", k=100)
    (tmp_path / "train").write_bytes(blob)
    fine = [f"fine{i}" for i in range(100)]
    (tmp_path / "meta").write_bytes(pickle.dumps(
        {"fine_label_names": fine, "coarse_label_names": [f"c{i}" for i in range(20)]}))
    d = load_cifar100(tmp_path)
    assert d.y.tolist() == labels and d.classes == fine
    assert load_cifar100(tmp_path, "coarse").y.tolist() == [c // 5 for c in labels]
    a, b = labels[0], next(v for v in labels if v != labels[0])
    sub = load_spec(f"cifar100:{tmp_path}:fine{b},{a}")
    assert sub.classes == [f"fine{b}", f"fine{a}"]
    keep = [k for k, v in enumerate(labels) if v in (a, b)]
    assert sub.y.tolist() == [0 if labels[k] == b else 1 for k in keep]
    assert torch.equal(sub.x, d.x[keep])
    by_index = load_spec(f"cifar100:{tmp_path}:{b},{a}")
    assert torch.equal(by_index.y, sub.y) and by_index.classes == sub.classes
    with pytest.raises(ValueError, match="unknown class 'bogus'"):
        load_spec(f"cifar100:{tmp_path}:bogus")


class _SystemPayload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _OpenPayload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


@pytest.mark.parametrize("payload", [_SystemPayload, _OpenPayload])
@pytest.mark.parametrize("where", ["top", "in_dict", "in_object_array"])
def test_malicious_cifar_pickle_refused(tmp_path, payload, where):
    marker = tmp_path / "marker"
    evil = payload(marker)
    obj = {"top": evil, "in_dict": {b"data": np.zeros((1, 3072), np.uint8), b"labels": [evil]},
           "in_object_array": {b"data": np.array([evil], dtype=object), b"labels": [0]}}[where]
    blob = pickle.dumps(obj, protocol=2)
    folder = tmp_path / "cifar"
    folder.mkdir()
    (folder / "data_batch_1").write_bytes(blob)
    with pytest.raises(ValueError, match=r"refusing to load (posix|os|nt|builtins|io)\.") as err:
        load_cifar10(folder)
    assert "data_batch_1" in str(err.value)
    assert not marker.exists()
    with pytest.raises(ValueError, match="refusing"):
        load_spec(f"cifar10:{folder}")
    assert not marker.exists()
    # the payload is live: an ordinary unpickler runs it
    live = tmp_path / "live"
    result = pickle.loads(pickle.dumps(payload(live), protocol=2))
    if hasattr(result, "close"):
        result.close()
    assert live.exists()


def test_cifar_wrong_content(tmp_path):
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps({b"data": np.zeros((2, 100), np.uint8),
                                                          b"labels": [0, 1]}))
    with pytest.raises(ValueError, match=r"\(N, 3072\) uint8"):
        load_cifar10(tmp_path)
    (tmp_path / "data_batch_1").write_bytes(b"not a pickle at all")
    with pytest.raises(ValueError, match="not a safe CIFAR pickle"):
        load_cifar10(tmp_path)
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(ValueError, match="a CIFAR batch is a dict"):
        load_cifar10(tmp_path)
    with pytest.raises(FileNotFoundError, match="no data_batch"):
        load_cifar10(tmp_path / "..")


# --- image folders ---------------------------------------------------------------------------

def _tree(root, mode="L", size=(4, 5), per_class=(2, 3, 1), seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    raw = {}
    for c, count in zip(("b_plane", "a_car", "c_jet"), per_class):
        (root / c).mkdir(parents=True)
        for k in range(count):
            shape = size if mode == "L" else (*size, 3)
            arr = rng.integers(0, 256, size=shape, dtype=np.uint8)
            Image.fromarray(arr, mode=mode).save(root / c / f"{k}.png")
            raw[(c, k)] = arr
    (root / "a_car" / "notes.txt").write_text("ignored")
    (root / ".hidden").mkdir()
    return raw


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_folder_round_trip(tmp_path, mode):
    raw = _tree(tmp_path, mode)
    d = load_folder(tmp_path)
    assert d.classes == ["a_car", "b_plane", "c_jet"]
    order = [("a_car", k) for k in range(3)] + [("b_plane", k) for k in range(2)] + [("c_jet", 0)]
    assert d.y.tolist() == [0, 0, 0, 1, 1, 2]
    expect = np.stack([raw[o] for o in order])
    expect = expect[:, None] if mode == "L" else expect.transpose(0, 3, 1, 2)
    assert d.x.shape == expect.shape
    assert torch.equal(d.x, torch.from_numpy(expect).float() / 255)
    assert torch.equal(load_spec(f"folder:{tmp_path}").x, d.x)


def test_folder_errors_and_resize(tmp_path):
    from PIL import Image

    _tree(tmp_path)
    Image.fromarray(np.zeros((6, 6), np.uint8)).save(tmp_path / "c_jet" / "big.png")
    with pytest.raises(ValueError, match="differ in size"):
        load_folder(tmp_path)
    assert load_folder(tmp_path, size=(3, 2)).x.shape == (7, 1, 3, 2)
    assert torch.equal(load_spec(f"folder:{tmp_path}:3x2").x, load_folder(tmp_path, (3, 2)).x)
    with pytest.raises(ValueError, match="must be HxW"):
        load_spec(f"folder:{tmp_path}:3by2")
    (tmp_path / "c_jet" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnope")
    with pytest.raises(ValueError, match=r"cannot read image .*broken\.png"):
        load_folder(tmp_path, size=(3, 2))
    assert len(load_folder(tmp_path, size=(3, 2), skip_unreadable=True)) == 7
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        load_folder(tmp_path, size=(3, 2), skip_unreadable=True)
    with pytest.raises(ValueError, match="no class sub-folders"):
        load_folder(tmp_path / "empty")


# --- arrays ----------------------------------------------------------------------------------

def test_npz_and_npy_round_trip(tmp_path):
    x = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32)
    y = np.array([0, 2, 1, 2, 0, 1])
    np.savez(tmp_path / "f.npz", x=x, y=y, classes=np.array(["cat", "dog", "eel"]))
    d = load_npz(tmp_path / "f.npz")
    assert torch.equal(d.x, torch.from_numpy(x)) and d.y.tolist() == y.tolist()
    assert d.classes == ["cat", "dog", "eel"]
    assert torch.equal(load_spec(f"npz:{tmp_path / 'f.npz'}").x, d.x)
    np.save(tmp_path / "x.npy", x.astype(np.float64))
    np.save(tmp_path / "y.npy", y)
    e = load_npy(tmp_path / "x.npy", tmp_path / "y.npy")
    assert torch.equal(e.x, d.x) and e.classes == ["0", "1", "2"]


def test_arrays_refused(tmp_path):
    np.savez(tmp_path / "nokey.npz", x=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="needs arrays 'x' and 'y'"):
        load_npz(tmp_path / "nokey.npz")
    np.savez(tmp_path / "obj.npz", x=np.array([{"a": 1}], dtype=object), y=np.zeros(1, int))
    with pytest.raises(ValueError, match=r"obj\.npz"):
        load_npz(tmp_path / "obj.npz")
    np.savez(tmp_path / "nan.npz", x=np.array([[np.nan]]), y=np.zeros(1, int))
    with pytest.raises(ValueError, match="NaN"):
        load_npz(tmp_path / "nan.npz")
    np.savez(tmp_path / "rows.npz", x=np.zeros((3, 2)), y=np.zeros(2, int))
    with pytest.raises(ValueError, match="x has 3 rows, y 2"):
        load_npz(tmp_path / "rows.npz")
    np.savez(tmp_path / "neg.npz", x=np.zeros((1, 2)), y=np.array([-1]))
    with pytest.raises(ValueError, match=">= 0"):
        load_npz(tmp_path / "neg.npz")
    (tmp_path / "empty.npy").write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        read_npy(tmp_path / "empty.npy")
    (tmp_path / "junk.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(ValueError, match=r"not a readable \.npy"):
        read_npy(tmp_path / "junk.npy")
    np.save(tmp_path / "obj.npy", np.array([object()], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=r"not a readable \.npy"):
        read_npy(tmp_path / "obj.npy")
    with pytest.raises(FileNotFoundError, match=r"missing\.npy"):
        read_npy(tmp_path / "missing.npy")
    with pytest.raises(ValueError, match=r"not a usable \.npz"):
        load_npz(tmp_path / "junk.npy")


# --- splits ----------------------------------------------------------------------------------

def _toy(counts=(10, 12, 9)):
    y = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    x = torch.arange(len(y), dtype=torch.float32)[:, None]  # x = row index, to trace rows
    return ClassificationData(x, y, [f"k{c}" for c in range(len(counts))])


def test_split_per_class():
    d = _toy()
    s = split(d, 3, test=0.2, seed=1)
    assert torch.bincount(s.labelled.y).tolist() == [3, 3, 3]
    assert torch.bincount(s.test.y).tolist() == [2, 2, 2]  # round(0.2 * n) per class
    rows = [part.x[:, 0].long().tolist() for part in s]
    every = [r for part in rows for r in part]
    assert len(every) == len(set(every)) == len(d)  # disjoint, and together all of the data
    for part in s:  # labels follow their rows; order of the data kept
        assert torch.equal(part.y, d.y[part.x[:, 0].long()])
        assert part.x[:, 0].tolist() == sorted(part.x[:, 0].tolist())
    again = split(d, 3, test=0.2, seed=1)
    assert all(torch.equal(a.x, b.x) for a, b in zip(s, again))
    other = split(d, 3, test=0.2, seed=2)
    assert not torch.equal(other.labelled.x, s.labelled.x)
    more = split(d, 5, test=0.2, seed=1)  # test split independent of the label count; nested
    assert torch.equal(more.test.x, s.test.x)
    assert set(s.labelled.x[:, 0].tolist()) <= set(more.labelled.x[:, 0].tolist())


def test_split_total_and_unlabelled():
    d = _toy()
    s = split(d, 7, per_class=False, unlabelled=4, test=0.0, seed=0)
    assert (len(s.labelled), len(s.unlabelled), len(s.test)) == (7, 4, 0)
    assert not set(s.labelled.x[:, 0].tolist()) & set(s.unlabelled.x[:, 0].tolist())


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"labels": 8, "test": 0.25}, "class 'k2' has only 7 examples outside the test split"),
    ({"labels": 10, "test": 0.0}, "class 'k2' has only 9 examples$"),
    ({"labels": 30, "per_class": False}, "only 24 examples"),
    ({"labels": 2, "unlabelled": 30}, "unlabelled=30, but only"),
    ({"labels": 0}, "labels must be an int >= 1"),
    ({"labels": 2, "test": 1.0}, r"test must be a fraction in \[0, 1\)"),
    ({"labels": 2, "unlabelled": -1}, "unlabelled must be"),
])
def test_split_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        split(_toy(), **kwargs)


# --- specs -----------------------------------------------------------------------------------

def test_spec_digits_and_mnist(mnist_dir):
    d = load_spec("digits")
    assert d.x.shape == (1797, 1, 8, 8) and d.x.dtype == torch.float32 and len(d.classes) == 10
    assert float(d.x.max()) == 1.0 and float(d.x.min()) == 0.0
    root, *_ = mnist_dir
    assert torch.equal(load_spec(f"mnist:{root}").x, load_mnist(root).x)


@pytest.mark.parametrize(("spec", "exc", "match"), [
    ("bogus:/tmp", ValueError, "unknown data spec 'bogus:/tmp'"),
    ("", ValueError, "empty data spec"),
    ("digits:/x", ValueError, "digits takes no path"),
    ("mnist:", ValueError, "needs a path"),
    ("mnist:/no/such/dir", FileNotFoundError, "mnist:/no/such/dir"),
    ("cifar100:/no/such/dir:1,2", FileNotFoundError, "/no/such/dir"),
    ("npz:/no/such.npz", FileNotFoundError, "npz:/no/such.npz"),
])
def test_spec_errors(spec, exc, match):
    with pytest.raises(exc, match=match):
        load_spec(spec)


def test_spec_wrong_format(tmp_path):
    bad = tmp_path / "data.npz"
    bad.write_text("hello")
    with pytest.raises(ValueError, match=r"data\.npz"):
        load_spec(f"npz:{bad}")
    with pytest.raises(FileNotFoundError, match="MNIST"):
        load_spec(f"mnist:{tmp_path}")
    with pytest.raises(FileNotFoundError, match="image folder"):
        load_spec(f"folder:{bad}")


def test_classification_data_checks():
    with pytest.raises(TypeError, match="float32"):
        ClassificationData(torch.zeros(2, 1, dtype=torch.float64), torch.zeros(2).long(), ["a"])
    with pytest.raises(ValueError, match="same N"):
        ClassificationData(torch.zeros(2, 1), torch.zeros(3).long(), ["a"])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 1\)"):
        ClassificationData(torch.zeros(2, 1), torch.tensor([0, 1]), ["a"])
    d = _toy()
    with pytest.raises(ValueError, match="twice"):
        d.select_classes([0, "k0"])
