"""Drop-in ``torch.nn`` losses built on the pytransfer ops."""

from pytransfer.nn.hscore_loss import HScore
from pytransfer.nn.lautum_loss import LautumLoss
from pytransfer.nn.mmd_loss import MKMMDLoss
from pytransfer.nn.ot_loss import OTLoss

__all__ = ["HScore", "LautumLoss", "MKMMDLoss", "OTLoss"]
