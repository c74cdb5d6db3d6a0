"""Temporal Ensembling (Laine & Aila 2017, "Temporal Ensembling for Semi-Supervised
Learning", Algorithm 2): the semi-supervised baseline of the Lautum paper's post-transfer
stage.

Every training sample i keeps an exponential moving average of the network's softmax
predictions, Z_i <- alpha Z_i + (1 - alpha) z_i, read with the bias correction
z~_i = Z_i / (1 - alpha^t_i) (t_i: updates of sample i so far; once per epoch in the paper).
The loss is the labelled cross-entropy plus w(t) times the consistency MSE
(1 / C) ||z_i - z~_i||^2 averaged over the batch, with the Gaussian ramp-up
w(t) = w_max exp(-5 (1 - t / T)^2) for t < T and w_max after. Inputs are stochastically
augmented on every pass.

Laine & Aila's settings (section 3, appendix A): alpha = 0.6; w_max = 30 scaled by the
labelled fraction M / N; ramp-up over T = 80 of 300 epochs; Adam with lr 0.003 (Gaussian
ramp-up over 80 epochs, ramp-down over the last 50, beta1 0.9 -> 0.5); batch 100; Gaussian
input noise sigma = 0.15; random translations of +-2 pixels (CIFAR-10, SVHN) and horizontal
flips (CIFAR-10). On 8x8 digits the translations are +-1 pixel; the method module documents
which of these it keeps on its shorter schedules.
"""

from __future__ import annotations

import math

import torch

ALPHA = 0.6
W_MAX = 30.0
RAMP_EPOCHS = 80
NOISE_STD = 0.15


def ramp_weight(t: float, ramp: float = RAMP_EPOCHS, w_max: float = W_MAX) -> float:
    """w(t) = w_max exp(-5 (1 - t / ramp)^2) for t < ramp, w_max afterwards."""
    if t >= ramp:
        return float(w_max)
    return float(w_max * math.exp(-5.0 * (1.0 - t / ramp) ** 2))


class TemporalEnsemble:
    """Per-sample EMA of predictions for ``n`` samples and ``num_classes`` classes."""

    def __init__(self, n: int, num_classes: int, alpha: float = ALPHA,
                 device: torch.device | str | None = None) -> None:
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"alpha must be in [0, 1), got {alpha}")
        self.alpha = alpha
        self.Z = torch.zeros(n, num_classes, dtype=torch.float64, device=device)
        self.t = torch.zeros(n, dtype=torch.int64, device=device)

    def targets(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(z~ (len(idx), C), mask): bias-corrected targets; mask is False for samples that
        have never been updated (their target is undefined and must not be used)."""
        t = self.t[idx]
        seen = t > 0
        denom = 1.0 - self.alpha ** t.clamp_min(1).double()
        return self.Z[idx] / denom[:, None], seen

    def update(self, idx: torch.Tensor, probs: torch.Tensor) -> None:
        """Z_i <- alpha Z_i + (1 - alpha) z_i for the samples ``idx`` (distinct indices)."""
        z = probs.detach().to(self.Z.dtype)
        self.Z[idx] = self.alpha * self.Z[idx] + (1.0 - self.alpha) * z
        self.t[idx] += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"Z": self.Z.clone(), "t": self.t.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.Z.copy_(state["Z"])
        self.t.copy_(state["t"])


def consistency_mse(probs: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
                    total: int | None = None) -> torch.Tensor:
    """sum over masked rows of (1/C) ||probs - targets||^2, divided by ``total`` (default:
    the number of rows): the batch mean of Laine & Aila's squared difference."""
    diff = (probs - targets.to(probs.dtype)).square().mean(-1) * mask.to(probs.dtype)
    return diff.sum() / (total or probs.shape[0])


def translate(x: torch.Tensor, shift: int, gen: torch.Generator) -> torch.Tensor:
    """Random translations of images (B, C, H, W) by integers in [-shift, shift] along each
    axis, per sample, filling with zeros."""
    B, _, H, W = x.shape
    offsets = torch.randint(-shift, shift + 1, (B, 2), generator=gen)
    padded = torch.nn.functional.pad(x, (shift, shift, shift, shift))
    out = torch.empty_like(x)
    for dy in range(-shift, shift + 1):
        for dx in range(-shift, shift + 1):
            sel = torch.nonzero((offsets[:, 0] == dy) & (offsets[:, 1] == dx)).flatten()
            if len(sel):
                out[sel] = padded[sel, :, shift - dy:shift - dy + H, shift - dx:shift - dx + W]
    return out


def hflip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Flip each image (B, C, H, W) left-right with probability 1/2."""
    flip = torch.rand(x.shape[0], generator=gen) < 0.5
    return torch.where(flip[:, None, None, None].to(x.device), x.flip(-1), x)


def augment_digits(x: torch.Tensor, shape: tuple[int, int], gen: torch.Generator,
                   shift: int = 1, noise: float = NOISE_STD) -> torch.Tensor:
    """Flattened grey digits (B, H*W): +-``shift``-pixel translations, Gaussian noise."""
    img = translate(x.reshape(x.shape[0], 1, *shape), shift, gen).reshape(x.shape)
    return img + noise * torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device)


def augment_images(x: torch.Tensor, gen: torch.Generator, crop_pad: int = 2,
                   noise: float = NOISE_STD) -> torch.Tensor:
    """Colour images (B, C, H, W): random crops (translations by up to ``crop_pad``),
    random horizontal flips and Gaussian noise."""
    out = hflip(translate(x, crop_pad, gen), gen)
    return out + noise * torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device)
