"""Data on the local disk (nothing is downloaded): the embedded sklearn digits, readers for
MNIST IDX, CIFAR-10/100 python batches (restricted unpickler), class-per-folder image trees and
``.npy``/``.npz`` feature arrays, all returning :class:`ClassificationData`; seeded
labelled / unlabelled / test splits; ``--data`` spec strings (:func:`load_spec`)."""

from pytransfer.data.arrays import load_npy, load_npz, read_npy
from pytransfer.data.cifar import RestrictedUnpickler, load_cifar10, load_cifar100, safe_unpickle
from pytransfer.data.classification import ClassificationData
from pytransfer.data.digits import DigitsTransfer, digits_transfer
from pytransfer.data.folder import load_folder
from pytransfer.data.idx import load_mnist, read_idx
from pytransfer.data.spec import SPEC_HELP, load_digits_data, load_spec
from pytransfer.data.splits import Split, split

__all__ = ["SPEC_HELP", "ClassificationData", "DigitsTransfer", "RestrictedUnpickler", "Split",
           "digits_transfer", "load_cifar10", "load_cifar100", "load_digits_data",
           "load_folder", "load_mnist", "load_npy", "load_npz", "load_spec", "read_idx",
           "read_npy", "safe_unpickle", "split"]
