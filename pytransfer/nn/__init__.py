"""Drop-in ``torch.nn`` losses built on the pytransfer ops."""

from pytransfer.nn.ot_loss import OTLoss

__all__ = ["OTLoss"]
