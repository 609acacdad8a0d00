"""
The uncertainty baselines the collaboration gradient is compared with: the single model's softmax entropy,
Monte-Carlo dropout, flip test-time augmentation and a deep ensemble, with the predictive entropy and the
probability variance of paper 000 sec. 3.5 (Lakshminarayanan et al. 2017).

Every map is (B, 1, *S). Ranges (K classes):

- entropy: [0, log K] nats; ``normalize=True`` divides by log K -> [0, 1].
- variance: the per-class variance (1/N) sum_m (P_m(c) - P(c))^2 lies in [0, 1/4]; it is reduced over the K
  classes to one map by ``"mean"`` (default; in [0, (K-1)/K^2]; for K = 2 both classes' variances are equal, so this
  is *the* variance), ``"sum"`` (in [0, (K-1)/K], the expected squared distance of a member's probability vector to
  the mean) or ``"max"`` (in [0, 1/4]). ``normalize=True`` divides by that bound -> [0, 1]. The bounds are tight:
  they are reached when the members' one-hot votes are spread evenly over the classes.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

__all__ = [
    "SampledUncertainty",
    "predictive_entropy",
    "softmax_entropy",
    "probability_variance",
    "variance_bound",
    "ProbabilityAccumulator",
    "mc_dropout_enabled",
    "mc_dropout",
    "flip_tta",
    "deep_ensemble",
    "SampledPredictor",
]

VARIANCE_REDUCTIONS = ("mean", "sum", "max")
# Every dropout flavour torch has; MC dropout turns exactly these on, so norm layers keep their running statistics.
_DROPOUT_TYPES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


def _check_probs(probs: torch.Tensor, name: str = "probs") -> None:
    if probs.ndim < 3:
        raise ValueError(f"{name} must be (B, K, *spatial), got shape {tuple(probs.shape)}.")
    if probs.shape[1] < 2:
        raise ValueError(f"{name} needs K >= 2 class channels, got shape {tuple(probs.shape)}.")
    if not torch.isfinite(probs).all():
        raise ValueError(f"{name} contains NaN or infinite values (shape {tuple(probs.shape)}).")


def predictive_entropy(probs: torch.Tensor, normalize: bool = False) -> torch.Tensor:
    """
    H = -sum_c P(c) log P(c) of a probability map (0 log 0 = 0).

    Args:
        probs: class probabilities, (B, K, *S), summing to 1 over K.
        normalize: divide by log K so the map lies in [0, 1].

    Returns:
        (B, 1, *S), in [0, log K] nats (or [0, 1]).

    Examples::

        >>> predictive_entropy(torch.full((1, 2, 4, 4), 0.5), normalize=True).unique()
        tensor([1.])
    """
    _check_probs(probs)
    h = -torch.special.xlogy(probs, probs).sum(dim=1, keepdim=True)
    h = h.clamp_min(0.0)  # rounding can make a certain voxel's entropy -1e-8
    return h / math.log(probs.shape[1]) if normalize else h


def softmax_entropy(logits: torch.Tensor, normalize: bool = False) -> torch.Tensor:
    """
    The single model's softmax entropy: free, one forward pass.

    Args:
        logits: (B, K, *S).
        normalize: divide by log K so the map lies in [0, 1].

    Returns:
        (B, 1, *S) in [0, log K] (or [0, 1]).

    Examples::

        >>> softmax_entropy(torch.zeros(1, 3, 8, 8)).max().item() == math.log(3)
        True
    """
    if logits.ndim < 3:
        raise ValueError(f"logits must be (B, K, *spatial), got shape {tuple(logits.shape)}.")
    return predictive_entropy(torch.softmax(logits.float(), dim=1), normalize)


def variance_bound(num_classes: int, reduction: str = "mean") -> float:
    """The largest value :py:func:`probability_variance` can take for ``num_classes`` classes and ``reduction``."""
    if reduction == "mean":
        return (num_classes - 1) / num_classes**2
    if reduction == "sum":
        return (num_classes - 1) / num_classes
    if reduction == "max":
        return 0.25
    raise ValueError(f"reduction must be one of {VARIANCE_REDUCTIONS}, got {reduction!r}.")


def _reduce_classes(var: torch.Tensor, reduction: str, normalize: bool) -> torch.Tensor:
    bound = variance_bound(var.shape[1], reduction)  # also validates ``reduction``
    if reduction == "mean":
        out = var.mean(dim=1, keepdim=True)
    elif reduction == "sum":
        out = var.sum(dim=1, keepdim=True)
    else:
        out = var.amax(dim=1, keepdim=True)
    return out / bound if normalize else out


def probability_variance(samples: torch.Tensor, reduction: str = "mean", normalize: bool = False) -> torch.Tensor:
    """
    sigma^2(c) = (1/N) sum_m (P_m(c) - P(c))^2 (population variance, paper 000 sec. 3.5), reduced over classes.

    Args:
        samples: the N members' probabilities stacked first, (N, B, K, *S).
        reduction: ``"mean"``, ``"sum"`` or ``"max"`` over the K classes (see the module docstring).
        normalize: divide by :py:func:`variance_bound` so the map lies in [0, 1].

    Returns:
        (B, 1, *S).

    Examples::

        >>> p = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).view(2, 1, 2, 1)  # two members disagree completely
        >>> probability_variance(p).item()
        0.25
    """
    if samples.ndim < 4:
        raise ValueError(f"samples must be (N, B, K, *spatial), got shape {tuple(samples.shape)}.")
    var = samples.float().var(dim=0, unbiased=False)
    return _reduce_classes(var, reduction, normalize)


class ProbabilityAccumulator:
    """
    Running mean and variance of probability maps (Welford's update), so N members never sit in memory at once.

    Examples::

        >>> acc = ProbabilityAccumulator()
        >>> for p in (torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])):
        ...     acc.add(p.view(1, 2, 1))
        >>> acc.variance().flatten().tolist()
        [0.25, 0.25]
    """

    def __init__(self) -> None:
        self.count = 0
        self.mean: torch.Tensor | None = None
        self._m2: torch.Tensor | None = None

    def add(self, probs: torch.Tensor) -> None:
        """Add one member's probabilities (B, K, *S)."""
        probs = probs.detach().float()
        if self.mean is None:
            self.count, self.mean, self._m2 = 1, probs.clone(), torch.zeros_like(probs)
            return
        if probs.shape != self.mean.shape:
            raise ValueError(f"sample shape {tuple(probs.shape)} differs from the first {tuple(self.mean.shape)}.")
        self.count += 1
        delta = probs - self.mean
        self.mean += delta / self.count
        self._m2 += delta * (probs - self.mean)

    def variance(self) -> torch.Tensor:
        """Per-class population variance (B, K, *S)."""
        if self._m2 is None:
            raise ValueError("no sample was added.")
        return (self._m2 / self.count).clamp_min(0.0)

    def result(self, reduction: str = "mean", normalize: bool = False) -> SampledUncertainty:
        """The mean probabilities with their predictive entropy and reduced variance."""
        if self.mean is None:
            raise ValueError("no sample was added.")
        return SampledUncertainty(
            probs=self.mean,
            entropy=predictive_entropy(self.mean, normalize),
            variance=_reduce_classes(self.variance(), reduction, normalize),
            num_samples=self.count,
        )


@dataclass
class SampledUncertainty:
    """
    What a sampling baseline returns.

    Attributes:
        probs: mean class probabilities over the N samples, (B, K, *S).
        entropy: predictive entropy of ``probs``, (B, 1, *S).
        variance: class-reduced probability variance across the samples, (B, 1, *S).
        num_samples: N.
    """

    probs: torch.Tensor
    entropy: torch.Tensor
    variance: torch.Tensor
    num_samples: int


@contextmanager
def mc_dropout_enabled(network: nn.Module) -> Iterator[int]:
    """
    Put ``network`` in eval mode with only its dropout layers in train mode; restore every module's mode after.

    Yields:
        the number of dropout layers with p > 0 that are now sampling.
    """
    modes = {m: m.training for m in network.modules()}
    network.eval()
    active = 0
    for m in network.modules():
        if isinstance(m, _DROPOUT_TYPES):
            m.train()
            active += int(m.p > 0)
    try:
        yield active
    finally:
        for m, mode in modes.items():
            m.training = mode


def _logits(network: Callable, x: torch.Tensor) -> torch.Tensor:
    out = network(x)
    if isinstance(out, (list, tuple)):  # an EU network that was left in train mode: the logits come first
        out = out[0]
    return out


@torch.no_grad()
def mc_dropout(
    network: nn.Module,
    x: torch.Tensor,
    num_samples: int = 10,
    reduction: str = "mean",
    normalize: bool = False,
) -> SampledUncertainty:
    """
    Monte-Carlo dropout (Gal & Ghahramani 2016): T stochastic forward passes with dropout sampling and every other
    layer (batch norm included) in eval mode. The network needs dropout > 0 (``UNet(..., dropout=0.1)``); without
    any active dropout layer every sample is identical, the variance is 0, and a warning says so.

    Args:
        network: the model, (B, C, *S) -> logits (B, K, *S).
        x: input, (B, C, *S).
        num_samples: T.
        reduction: how the variance is reduced over classes (see the module docstring).
        normalize: entropy and variance in [0, 1].

    Returns:
        :py:class:`SampledUncertainty`. Seed torch's global RNG first for reproducible masks.

    Examples::

        >>> net = UNet(2, 1, 2, channels=(4, 8), dropout=0.2)
        >>> mc_dropout(net, torch.rand(1, 1, 16, 16), num_samples=4).variance.shape
        torch.Size([1, 1, 16, 16])
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}.")
    acc = ProbabilityAccumulator()
    with mc_dropout_enabled(network) as active:
        if active == 0:
            msg = f"{type(network).__name__} has no dropout layer with p > 0: MC dropout gives zero variance."
            warnings.warn(msg, stacklevel=3)
        for _ in range(num_samples):
            acc.add(torch.softmax(_logits(network, x).float(), dim=1))
    return acc.result(reduction, normalize)


def _flip_sets(spatial_dims: int, axes: Sequence[int] | None) -> list[tuple[int, ...]]:
    """Every subset of the spatial axes (as tensor dims), the identity first: 2^D flips."""
    axes = tuple(range(spatial_dims)) if axes is None else tuple(axes)
    if any(a < 0 or a >= spatial_dims for a in axes):
        raise ValueError(f"flip axes must be spatial axes in [0, {spatial_dims}), got {axes}.")
    dims = [a + 2 for a in axes]
    return [combo for r in range(len(dims) + 1) for combo in itertools.combinations(dims, r)]


@torch.no_grad()
def flip_tta(
    network: Callable,
    x: torch.Tensor,
    axes: Sequence[int] | None = None,
    reduction: str = "mean",
    normalize: bool = False,
) -> SampledUncertainty:
    """
    Test-time augmentation with every combination of flips along ``axes`` (2^D passes; 8 in 3D): each prediction
    is flipped back onto the input grid before the probabilities are averaged.

    MONAI's ``TestTimeAugmentation`` is not used: it draws random realisations of a random transform on one
    un-batched data dict through a DataLoader and returns mode/mean/std of the post-processed outputs, while this
    needs all flips deterministically, on a batched tensor, inside a ``SlidingWindowInferer``, with the softmax
    probabilities kept for the entropy. A flip is its own exact inverse on the voxel grid, so no ``Invertd`` is needed.

    Args:
        network: (B, C, *S) -> logits (B, K, *S), in eval mode.
        x: input, (B, C, *S).
        axes: spatial axes to flip (0 = first spatial axis); all by default.
        reduction: how the variance is reduced over classes.
        normalize: entropy and variance in [0, 1].

    Returns:
        :py:class:`SampledUncertainty` with N = 2^len(axes).

    Examples::

        >>> flip_tta(UNet(3, 1, 2, channels=(4, 8)).eval(), torch.rand(1, 1, 8, 8, 8)).num_samples
        8
    """
    acc = ProbabilityAccumulator()
    for dims in _flip_sets(x.ndim - 2, axes):
        xi = torch.flip(x, dims) if dims else x
        p = torch.softmax(_logits(network, xi).float(), dim=1)
        acc.add(torch.flip(p, dims) if dims else p)
    return acc.result(reduction, normalize)


@torch.no_grad()
def deep_ensemble(
    networks: Sequence[Callable],
    x: torch.Tensor,
    reduction: str = "mean",
    normalize: bool = False,
) -> SampledUncertainty:
    """
    Deep ensemble (Lakshminarayanan et al. 2017) of N independently trained models: the entropy of the mean
    probability P and the variance (1/N) sum_m (P_m - P)^2, reduced over classes (paper 000 sec. 3.5).

    Args:
        networks: the N members, each (B, C, *S) -> logits (B, K, *S), in eval mode.
        x: input, (B, C, *S).
        reduction: how the variance is reduced over classes.
        normalize: entropy and variance in [0, 1].

    Returns:
        :py:class:`SampledUncertainty` with N = len(networks).

    Examples::

        >>> members = [UNet(2, 1, 2, channels=(4, 8)).eval() for _ in range(3)]
        >>> deep_ensemble(members, torch.rand(1, 1, 16, 16)).entropy.shape
        torch.Size([1, 1, 16, 16])
    """
    if len(networks) == 0:
        raise ValueError("deep_ensemble needs at least one network.")
    acc = ProbabilityAccumulator()
    for net in networks:
        acc.add(torch.softmax(_logits(net, x).float(), dim=1))
    return acc.result(reduction, normalize)


class SampledPredictor(nn.Module):
    """
    A sampling baseline as one module for MONAI's ``SlidingWindowInferer``: an image patch (B, C, *S) ->
    ONE tensor (B, K + 2, *S) = [mean probabilities (K) | entropy (1) | variance (1)].

    Args:
        method: ``"mc_dropout"``, ``"tta"`` or ``"ensemble"``.
        networks: one network (``"mc_dropout"``, ``"tta"``) or the ensemble members.
        num_samples: T for MC dropout.
        reduction: how the variance is reduced over classes.
        normalize: entropy and variance in [0, 1].

    Examples::

        >>> predictor = SampledPredictor("tta", UNet(3, 1, 2, channels=(4, 8)).eval())
        >>> SlidingWindowInferer(roi_size=(8, 8, 8))(torch.rand(1, 1, 10, 12, 9), predictor).shape
        torch.Size([1, 4, 10, 12, 9])
    """

    def __init__(
        self,
        method: str,
        networks: nn.Module | Sequence[nn.Module],
        num_samples: int = 10,
        reduction: str = "mean",
        normalize: bool = False,
    ) -> None:
        super().__init__()
        if method not in ("mc_dropout", "tta", "ensemble"):
            raise ValueError(f"method must be 'mc_dropout', 'tta' or 'ensemble', got {method!r}.")
        nets = list(networks) if isinstance(networks, (list, tuple, nn.ModuleList)) else [networks]
        if method != "ensemble" and len(nets) != 1:
            raise ValueError(f"{method} takes one network, got {len(nets)}.")
        self.method = method
        self.networks = nn.ModuleList(nets)
        self.num_samples = num_samples
        self.reduction = reduction
        self.normalize = normalize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.method == "mc_dropout":
            r = mc_dropout(self.networks[0], x, self.num_samples, self.reduction, self.normalize)
        elif self.method == "tta":
            r = flip_tta(self.networks[0], x, reduction=self.reduction, normalize=self.normalize)
        else:
            r = deep_ensemble(list(self.networks), x, self.reduction, self.normalize)
        return torch.cat([r.probs, r.entropy, r.variance], dim=1)
