"""Streaming, mergeable H-score statistics (Definition 2 of the paper).

The statistics of features f are kept about a fixed shift (the mean of the first batch),
z = f - shift, in float64: n, sum z, sum z z^T, per-class counts and sums, and for the
Ledoit-Wolf intensity sum ||z||^2 z and sum ||z||^4. Merging re-expresses one side about the
other's shift (exact algebra, no approximation), so streaming, ``merge`` and ``all_reduce``
reproduce the one-shot result to rounding (<= 1e-10 relative in float64). Because z is
centred to within a few standard deviations, a large common offset in float32 features
costs no precision (the naive sum f f^T - N m m^T cancels catastrophically).
"""

from __future__ import annotations

import warnings

import torch

from pytransfer import _checks, _dispatch
from pytransfer.hscore import _ops
from pytransfer.hscore.reference import shrink

#: cov(f) is treated as singular when a Cholesky pivot is below this * d * its variance
SINGULAR_RTOL = 1e3 * torch.finfo(torch.float64).eps
_FIELDS = ("s1", "s2", "cs", "q3", "q4")


def check_labels(name: str, labels: object, n: int, num_classes: int) -> torch.Tensor:
    """Integer labels (label maps) with ``n`` rows, in [0, num_classes); returns int64."""
    _checks.tensor(name, labels)
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise TypeError(f"{name} must have an integer dtype, got {labels.dtype}")
    if labels.shape[0] != n:
        raise ValueError(f"{name} has {labels.shape[0]} rows but features have N={n}")
    if labels.numel():
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0:
            raise ValueError(f"{name} has negative entries (min {lo}); classes are 0..C-1")
        if hi >= num_classes:
            raise ValueError(f"{name} has entries >= num_classes={num_classes} (max {hi})")
    return labels.long()


def check_num_classes(num_classes: object) -> int:
    _checks.positive_int("num_classes", num_classes)
    if num_classes <= 1:
        raise ValueError(f"num_classes must be >= 2 (the H-score of one class is 0), got "
                         f"{num_classes}")
    return num_classes


def check_shrinkage(shrinkage: object) -> None:
    if shrinkage is None or shrinkage == "ledoit-wolf":
        return
    if isinstance(shrinkage, str):
        raise ValueError(f"shrinkage must be None, a float in [0, 1] or 'ledoit-wolf', "
                         f"got {shrinkage!r}")
    s = _checks.nonneg_float("shrinkage", shrinkage)
    if s > 1:
        raise ValueError(f"shrinkage must be a float in [0, 1], got {s}")


class HScoreStats:
    """Sufficient statistics of the H-score of T feature sets sharing one label vector.

    ``update(features (N, d) or (T, N, d), labels (N,))`` streams; ``merge`` and
    ``all_reduce`` combine shards; ``h_score(shrinkage)`` returns () or (T,) (the shape of
    the first update). ``dtype`` is the accumulator dtype (float64 unless memory forbids).
    """

    def __init__(self, d: int, num_classes: int, *, dtype: torch.dtype = torch.float64,
                 device: torch.device | str | None = None, backend: str = "auto",
                 chunk_size: int | None = None, check_inputs: bool = True) -> None:
        self.d = _checks.positive_int("d", d)
        self.num_classes = check_num_classes(num_classes)
        if dtype not in (torch.float64, torch.float32):
            raise TypeError(f"dtype must be torch.float64 or torch.float32, got {dtype}")
        _dispatch.check_backend_name(backend)
        if chunk_size is not None:
            _checks.positive_int("chunk_size", chunk_size)
        self.dtype, self.device, self.backend = dtype, torch.device(device or "cpu"), backend
        self._fits(1)
        self.chunk_size, self.check_inputs = chunk_size, check_inputs
        self.batched: bool | None = None  # set by the first update: (T, N, d) or (N, d)
        self.input_eps = torch.finfo(torch.float64).eps
        self.n = torch.zeros((), dtype=dtype, device=self.device)
        self.counts = torch.zeros(num_classes, dtype=dtype, device=self.device)
        self.shift: torch.Tensor | None = None

    # ------------------------------------------------------------------ accumulation
    def _fits(self, T: int) -> None:
        """The accumulators of T feature sets, (T, d, d) and (T, C, d) first, must fit."""
        d, C = self.d, self.num_classes
        per = T * (d * d + C * d + 3 * d + 1) + C + 1
        _checks.fits(f"HScoreStats(d={d}, num_classes={C}) for T={T} feature set(s)",
                     per * torch.finfo(self.dtype).bits // 8, self.device)

    def _init(self, T: int, batched: bool, shift: torch.Tensor) -> None:
        self._fits(T)
        self.batched, self.T = batched, T
        d, C = self.d, self.num_classes
        z = {"dtype": self.dtype, "device": self.device}
        self.shift = shift.to(**z)
        self.s1, self.s2 = torch.zeros(T, d, **z), torch.zeros(T, d, d, **z)
        self.cs, self.q3, self.q4 = torch.zeros(T, C, d, **z), torch.zeros(T, d, **z), \
            torch.zeros(T, **z)

    def update(self, features: torch.Tensor, labels: torch.Tensor) -> HScoreStats:
        """Add a batch: features (N, d) or (T, N, d), integer labels (N,) in [0, C)."""
        _checks.floating("features", features)
        _checks.ndim("features", features, (2, 3))
        if features.shape[-1] != self.d:
            raise ValueError(f"features have d={features.shape[-1]}, the statistics d={self.d}")
        batched = features.dim() == 3
        f = features if batched else features[None]
        T, N = f.shape[0], f.shape[1]
        if self.batched is not None and (batched != self.batched or T != self.T):
            raise ValueError(f"features of shape {tuple(features.shape)} do not match earlier "
                             f"updates ({'T=' + str(self.T) if self.batched else '2-D'})")
        _checks.same_device(features=features, labels=_checks.tensor("labels", labels))
        _checks.ndim("labels", labels, (1,))
        if self.check_inputs:
            labels = check_labels("labels", labels, N, self.num_classes)
            _checks.finite("features", features)
        else:
            labels = labels.long()
            if labels.shape[0] != N:
                raise ValueError(f"labels has {labels.shape[0]} rows but features have N={N}")
        if f.dtype in (torch.float16, torch.bfloat16):
            f = f.float()
        if self.batched is None:
            head = f[:, :_ops.default_chunk(T, self.d)]  # the mean of the first rows
            shift = head.double().mean(1) if N else f.new_zeros(T, self.d, dtype=torch.float64)
            self._init(T, batched, shift)
        self.input_eps = max(self.input_eps, torch.finfo(f.dtype).eps)
        if N == 0:
            return self
        chunk = self.chunk_size or _ops.default_chunk(T, self.d)
        _, fn = _dispatch.resolve(_ops.OP_STATS, self.backend, f.device.type)
        stats = fn(f, labels, self.shift.double(), self.num_classes, chunk)
        for name, value in zip(_FIELDS, stats):
            getattr(self, name).add_(value.to(self.dtype))
        self.n += N
        self.counts += torch.bincount(labels, minlength=self.num_classes).to(self.dtype)
        return self

    def _reshift(self, new: torch.Tensor) -> None:
        """Re-express every sum about ``new`` (T, d): z' = z + delta, delta = shift - new."""
        delta = self.shift - new
        n, s1, s2, q3 = self.n, self.s1, self.s2, self.q3
        e = delta.square().sum(-1)
        s2d = torch.einsum("tij,tj->ti", s2, delta)
        tr = torch.diagonal(s2, dim1=-2, dim2=-1).sum(-1)
        ds1 = (delta * s1).sum(-1)
        self.q4 = (self.q4 + 4 * (delta * s2d).sum(-1) + n * e * e + 4 * (delta * q3).sum(-1)
                   + 2 * e * tr + 4 * e * ds1)
        self.q3 = q3 + 2 * s2d + e[:, None] * s1 + delta * (tr + 2 * ds1 + n * e)[:, None]
        self.s2 = s2 + delta[:, :, None] * s1[:, None, :] + s1[:, :, None] * delta[:, None, :] \
            + n * delta[:, :, None] * delta[:, None, :]
        self.s1 = s1 + n * delta
        self.cs = self.cs + self.counts[None, :, None] * delta[:, None, :]
        self.shift = new.clone()

    def _check_compatible(self, other: HScoreStats) -> None:
        if not isinstance(other, HScoreStats):
            raise TypeError(f"other must be HScoreStats, got {type(other).__name__}")
        if (other.d, other.num_classes) != (self.d, self.num_classes):
            raise ValueError(f"cannot merge statistics of (d={other.d}, C={other.num_classes}) "
                             f"into (d={self.d}, C={self.num_classes})")
        if None not in (self.batched, other.batched) and (
                (self.batched, self.T) != (other.batched, other.T)):
            raise ValueError("cannot merge statistics of different feature-set counts T")

    def merge(self, other: HScoreStats) -> HScoreStats:
        """Add another shard's statistics (same d and C) into this one; returns self."""
        self._check_compatible(other)
        if other.batched is None:
            return self
        if self.batched is None:
            self._init(other.T, other.batched, other.shift)
        o = HScoreStats(other.d, other.num_classes, dtype=self.dtype, device=self.device)
        o.n, o.counts = other.n.to(self.dtype), other.counts.to(self.dtype)
        o.shift = other.shift.to(self.dtype)
        for name in _FIELDS:
            setattr(o, name, getattr(other, name).to(self.dtype))
        o._reshift(self.shift)
        for name in _FIELDS:
            setattr(self, name, getattr(self, name) + getattr(o, name))
        self.n = self.n + o.n
        self.counts = self.counts + o.counts
        self.input_eps = max(self.input_eps, other.input_eps)
        return self

    def all_reduce(self, group: object = None) -> HScoreStats:
        """Sum the statistics of every rank of ``group`` (torch.distributed), in place.

        Every rank must have called ``update`` at least once (an empty batch will do), so
        that T is known. The common shift is the count-weighted mean of the ranks' shifts.
        """
        import torch.distributed as dist

        if self.batched is None:
            raise RuntimeError("all_reduce needs at least one update on every rank (an empty "
                               "batch is enough)")
        w = torch.cat([self.n.reshape(1), (self.n * self.shift).reshape(-1)])
        dist.all_reduce(w, group=group)
        total = w[0]
        common = w[1:].reshape_as(self.shift) / total if total > 0 else torch.zeros_like(
            self.shift)
        self._reshift(common)
        parts = [self.n.reshape(1), self.counts] + [getattr(self, k) for k in _FIELDS]
        flat = torch.cat([p.reshape(-1) for p in parts])
        dist.all_reduce(flat, group=group)
        out = flat.split([p.numel() for p in parts])
        self.n, self.counts = out[0].reshape(()), out[1].clone()
        for name, part, value in zip(_FIELDS, parts[2:], out[2:]):
            setattr(self, name, value.reshape(part.shape).clone())
        return self

    # ------------------------------------------------------------------ scoring
    def absent_classes(self) -> list[int]:
        """Classes with no sample so far (they contribute nothing to H)."""
        return [int(c) for c in torch.nonzero(self.counts == 0).flatten()]

    def covariance(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean (T, d) and covariance cov(f) (T, d, d) with the 1/N normaliser, float64."""
        if self.batched is None or float(self.n) == 0:
            raise ValueError("no samples: call update() with a non-empty batch first")
        n = self.n.double()
        mz = self.s1.double() / n
        cov = self.s2.double() / n - mz[:, :, None] * mz[:, None, :]
        return self.shift.double() + mz, (cov + cov.mT) / 2

    def ledoit_wolf(self) -> torch.Tensor:
        """Ledoit-Wolf shrinkage intensity (T,) from the streamed moments (sklearn's formula)."""
        _, cov = self.covariance()
        n, d = self.n.double(), self.d
        m = self.s1.double() / n
        s2, q3 = self.s2.double(), self.q3.double()
        # sum_i ||z_i - m||^4 expanded in the shifted moments
        a_sq = self.q4.double()
        b_sq = torch.einsum("ti,tij,tj->t", m, s2, m)
        ab = (m * q3).sum(-1)
        c = m.square().sum(-1)
        tr = torch.diagonal(s2, dim1=-2, dim2=-1).sum(-1)
        b = (m * self.s1.double()).sum(-1)
        beta_ = a_sq + 4 * b_sq + n * c * c - 4 * ab + 2 * c * tr - 4 * c * b
        mu = torch.diagonal(cov, dim1=-2, dim2=-1).sum(-1) / d
        delta_ = cov.square().sum((-2, -1))
        beta = (beta_ / n - delta_) / (d * n)
        delta = (delta_ - d * mu * mu) / d
        beta = torch.minimum(beta, delta)
        return torch.where(beta <= 0, torch.zeros_like(beta), beta / delta)

    def regularised_covariance(self, shrinkage: float | str | None) -> torch.Tensor:
        """cov(f), shrunk as asked; errors for singular covariances (see ``h_score``)."""
        check_shrinkage(shrinkage)
        mean, cov = self.covariance()
        n, d = int(self.n), self.d
        if shrinkage is None:
            if n - 1 <= d:
                raise ValueError(
                    f"N - 1 = {n - 1} <= d = {d}: cov(f) has rank < d and the H-score "
                    f"saturates at C - 1 (what pinv silently returns); pass shrinkage=float or "
                    f"shrinkage='ledoit-wolf'")
            var = torch.diagonal(cov, dim1=-2, dim2=-1)
            floor = (16 * self.input_eps * mean.abs()).square()
            dead = (var <= floor) | (var <= 0)
            if bool(dead.any()):
                where = [(t, torch.nonzero(dead[t]).flatten().tolist()) for t in range(self.T)
                         if bool(dead[t].any())]
                desc = "; ".join(f"feature set {t}: columns {cols[:10]}" for t, cols in where)
                raise ValueError(f"features have constant (dead) columns ({desc}): cov(f) is "
                                 f"singular; drop them or pass shrinkage=")
            return cov
        s = self.ledoit_wolf() if shrinkage == "ledoit-wolf" else float(shrinkage)
        return shrink(cov, s)

    def cholesky(self, shrinkage: float | str | None = None) -> torch.Tensor:
        """Lower Cholesky factor (T, d, d) of the (shrunk) cov(f); never an inverse."""
        cov = self.regularised_covariance(shrinkage)
        L, info = torch.linalg.cholesky_ex(cov)
        # a pivot L_jj^2 is the variance of column j left after regressing out columns < j
        pivot = torch.diagonal(L, dim1=-2, dim2=-1).square()
        var = torch.diagonal(cov, dim1=-2, dim2=-1)
        tiny = (pivot <= SINGULAR_RTOL * self.d * var).any(-1)
        if bool((info > 0).any() or tiny.any()):
            bad = torch.nonzero((info > 0) | tiny).flatten().tolist()
            advice = ("pass shrinkage=float or shrinkage='ledoit-wolf'" if shrinkage is None
                      else f"even with shrinkage={shrinkage!r}: pass a larger float shrinkage "
                           f"(e.g. 0.1) or drop the dependent features")
            raise ValueError(f"cov(f) is singular or not positive definite (feature sets "
                             f"{bad}; linearly dependent features); {advice}")
        return L

    def h_score(self, shrinkage: float | str | None = None) -> torch.Tensor:
        """H(f) = tr(cov(f)^{-1} cov(E[f|Y])) (Definition 2), by a Cholesky solve.

        ``shrinkage``: None, a float s in [0, 1] for (1 - s) cov + s (tr cov / d) I, or
        ``"ledoit-wolf"`` for the Ledoit-Wolf intensity of the same statistics.
        """
        L = self.cholesky(shrinkage)
        n = self.n.double()
        counts = self.counts.double()
        present = counts > 0
        mz = self.s1.double() / n
        diff = self.cs.double()[:, present] / counts[present, None] - mz[:, None, :]
        w = torch.linalg.solve_triangular(L, diff.mT, upper=False)
        h = (w.square().sum(-2) * counts[present] / n).sum(-1)
        return h if self.batched else h[0]


def h_score(features: torch.Tensor, labels: torch.Tensor, *, num_classes: int | None = None,
            shrinkage: float | str | None = None, chunk_size: int | None = None,
            backend: str = "auto", check_inputs: bool = True) -> torch.Tensor:
    """H-score (Definition 2) of features (N, d) -> () or T feature sets (T, N, d) -> (T,).

    ``num_classes`` defaults to labels.max() + 1; absent classes are skipped with a warning.
    ``backend="reference"`` is the float64 two-pass formula (differentiable, through the
    Ledoit-Wolf intensity too); the others stream the statistics kernel in chunks of
    ``chunk_size`` rows and do not track gradients.
    Higher-order transfer: score ``torch.cat([f1, f2], -1)``.
    """
    _checks.floating("features", features)
    _checks.ndim("features", features, (2, 3))
    _checks.tensor("labels", labels)
    check_shrinkage(shrinkage)
    if features.shape[-1] == 0:
        raise ValueError("features must have d >= 1 columns, got d = 0")
    if num_classes is None:
        num_classes = int(labels.max()) + 1 if labels.numel() else 0
    stats = HScoreStats(features.shape[-1], check_num_classes(num_classes),
                        device=features.device, backend=backend, chunk_size=chunk_size,
                        check_inputs=check_inputs)
    if _dispatch.resolve(_ops.OP_STATS, backend, features.device.type)[0] != "reference":
        with torch.no_grad():
            stats.update(features, labels)
        _warn_absent(stats)
        return stats.h_score(shrinkage)
    from pytransfer.hscore.reference import h_score_reference, ledoit_wolf_reference

    stats.update(features.detach(), labels)  # validation and the singularity errors
    _warn_absent(stats)
    stats.cholesky(shrinkage)
    # the Ledoit-Wolf intensity is a function of the features: differentiated with them
    s = ledoit_wolf_reference(features) if shrinkage == "ledoit-wolf" else shrinkage
    try:
        return h_score_reference(features, labels.long(), num_classes, s)
    except torch.linalg.LinAlgError as exc:  # pivots the streamed check let through
        raise ValueError(f"cov(f) is singular or not positive definite ({exc}); pass a "
                         f"(larger) float shrinkage") from None


def _warn_absent(stats: HScoreStats) -> None:
    absent = stats.absent_classes()
    if absent:
        warnings.warn(f"classes {absent[:20]} have no sample: they are skipped", UserWarning,
                      stacklevel=3)
