"""pytransfer: fast, exact kernels for information-theoretic transfer learning in PyTorch."""

from pytransfer import free_energy, hscore, lautum, mmd, nn, ot
from pytransfer._dispatch import BACKENDS, BackendUnavailableError, backends

__version__ = "0.1.0"
__all__ = [
           "BACKENDS",
           "BackendUnavailableError",
           "__version__",
           "backends",
           "free_energy",
           "hscore",
           "lautum",
           "mmd",
           "nn",
           "ot",
]
