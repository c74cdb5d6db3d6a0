"""The paper's small models (Appendix A): MLP encoder with a diagonal Gaussian z, Bernoulli or
Gaussian decoder, softmax classifier on z, standard or learnable Gaussian prior. Each
implements the :class:`~pytransfer.free_energy.operator.GibbsModel` protocol."""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn
from torch.distributions import Independent, Normal

from pytransfer import _checks

DECODERS = ("bernoulli", "gaussian")
PRIORS = ("gaussian", "learnable")


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class FreeEnergyModel(nn.Module):
    """Encoder e(z|x), prior m(z), decoder d(x|z) and classifier c(y|z) of eq. 11.

    Args:
        input_dim: flattened input size (64 for 8x8 digits, 784 for MNIST).
        hidden: hidden width of the encoder and decoder MLPs.
        latent: dimension of z.
        classes: number of labels.
        classifier_hidden: hidden width of the classifier (0: one linear layer).
        decoder: "bernoulli" (inputs in [0, 1]) or "gaussian" (unit variance: mean-square error).
        prior: "gaussian" (N(0, I), no parameters) or "learnable" (diagonal Gaussian).
    """

    def __init__(self, input_dim: int, hidden: int, latent: int, classes: int, *,
                 classifier_hidden: int = 0, decoder: str = "bernoulli",
                 prior: str = "gaussian") -> None:
        super().__init__()
        for name, v in (("input_dim", input_dim), ("hidden", hidden), ("latent", latent),
                        ("classes", classes)):
            _checks.positive_int(name, v)
        self.decoder_kind = _checks.choice("decoder", decoder, DECODERS)
        self.prior_kind = _checks.choice("prior", prior, PRIORS)
        self.encoder = _mlp([input_dim, hidden, 2 * latent])
        self.decoder = _mlp([latent, hidden, input_dim])
        sizes = [latent, classifier_hidden, classes] if classifier_hidden else [latent, classes]
        self.classifier = _mlp(sizes)
        if prior == "learnable":
            self.prior_mean = nn.Parameter(torch.zeros(latent))
            self.prior_log_std = nn.Parameter(torch.zeros(latent))

    def encode(self, x: torch.Tensor) -> Independent:
        """e(z|x) = N(mu(x), diag sigma(x)^2)."""
        mu, log_std = self.encoder(x.flatten(1)).chunk(2, -1)
        return Independent(Normal(mu, log_std.clamp(-8, 4).exp()), 1)

    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        """log m(z), (S, X)."""
        if self.prior_kind == "gaussian":
            return -0.5 * (z.pow(2).sum(-1) + z.shape[-1] * math.log(2 * math.pi))
        return Independent(Normal(self.prior_mean, self.prior_log_std.exp()), 1).log_prob(z)

    def log_decoder(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log d(x|z), (S, X)."""
        out = self.decoder(z)
        x = x.flatten(1).expand_as(out)
        if self.decoder_kind == "bernoulli":
            return -nn.functional.binary_cross_entropy_with_logits(
                out, x, reduction="none").sum(-1)
        return -0.5 * ((x - out).pow(2) + math.log(2 * math.pi)).sum(-1)

    def log_classifier(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log c(y|z), (S, X); y (X,) labels, or (X, classes) label distributions: then
        sum_k y_k log c(k|z) (the interpolated labels of Remark 11)."""
        logp = torch.log_softmax(self.classifier(z), -1)
        if y.is_floating_point():
            return (logp * y).sum(-1)
        L = logp.shape[-1]
        if y.numel() and not bool(((y >= 0) & (y < L)).all()):
            raise ValueError(f"y holds labels outside [0, {L}) (the classifier's {L} classes): "
                             f"min {int(y.min())}, max {int(y.max())}")
        return logp.gather(-1, y.expand(logp.shape[:-1]).unsqueeze(-1)).squeeze(-1)


def digits_model(latent: int = 8, hidden: int = 64, *, decoder: str = "bernoulli",
                 prior: str = "gaussian") -> FreeEnergyModel:
    """The 8x8-digits model: 64-hidden-latent encoder/decoder, linear 10-way classifier."""
    return FreeEnergyModel(64, hidden, latent, 10, decoder=decoder, prior=prior)


def mnist_model(*, decoder: str = "gaussian", prior: str = "gaussian") -> FreeEnergyModel:
    """Appendix A's MNIST model: 784-256-16 encoder/decoder (Gaussian decoder: mean-square
    error), classifier with one hidden layer of 12 units."""
    return FreeEnergyModel(784, 256, 16, 10, classifier_hidden=12, decoder=decoder, prior=prior)
