"""Embedded data: scikit-learn's 8x8 digits (shipped inside scikit-learn, nothing downloaded)."""

from pytransfer.data.digits import DigitsTransfer, digits_transfer

__all__ = ["DigitsTransfer", "digits_transfer"]
