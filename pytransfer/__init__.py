"""pytransfer: fast, exact kernels for information-theoretic transfer learning in PyTorch."""

from pytransfer import nn, ot
from pytransfer._dispatch import BACKENDS, BackendUnavailableError, backends

__version__ = "0.1.0"
__all__ = ["BACKENDS", "BackendUnavailableError", "backends", "nn", "ot", "__version__"]
