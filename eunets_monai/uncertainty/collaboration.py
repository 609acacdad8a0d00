"""
The collaboration gradient (EU-Nets, Sun & Lio, sec. 3.5): do adjacent MHEX+ heads pull head l's Conv1 the same
way at a pixel?

For a pixel p and each pair of adjacent heads (l, l+1), l = 0 the deepest:

.. code-block:: text

    grad_l(p)   = d CE_l(p)   / d C1_l          C1_l = head l's Conv1 weight (C x C_in)
    grad_l+1(p) = d CE_l+1(p) / d C1_l          (reaches C1_l through the gated features on the decoder path)
    U(p)        = sum_{l=0}^{L-2} cos(grad_l(p), grad_l+1(p)),   cos(a, b) = a.b / (|a| |b| + eps)

**Orientation.** The paper calls U itself the uncertainty and reports a *positive* correlation of U with the deep
ensemble's entropy (its Table 2); :py:func:`collaboration_gradient` returns U as defined, in [-(L-1), L-1], with no
flip. (An earlier version of this module returned (L-1-U)/(2(L-1)), the opposite direction.) Which direction marks
the model's errors is a question for measurement, answered in ``docs/uncertainty.md``.
:py:func:`collaboration_to_unit` maps U monotonically to [0, 1] as ``(U + L - 1) / (2 (L - 1))`` (same order, so
the same AUROC) for maps that must live in [0, 1].

Interpretation choices (the paper leaves them open):

- **Grid.** CE_k(p) is the cross-entropy of head k's deep prediction resized to the output grid
  (``EUNetOutputs.deep_predictions``: bi-/trilinear, internal padding cropped), exactly the maps deep supervision
  trains on; p runs over the output (= input) pixels.
- **Label.** The model's own predicted class, argmax of the final logits (logit > 0 for a single-channel sigmoid
  output, with binary cross-entropy); a given label map (e.g. the ground truth, for analysis) replaces it.
- A zero gradient (e.g. all of Conv1's units dead at the pixel's positions) gives cos = 0, the neutral value.

**Binary tasks.** With one sigmoid output, d CE_k(p) / d z_k(p) = sigma(z_k) - y is a scalar, and
grad_k(p) = (sigma(z_k) - y) J_k(p) with J_k(p) = d z_k(p) / d C1_l. With two softmax classes the logit gradient is
(p_1 - y_1) (-1, 1), again a scalar times a fixed vector. Either way cos(grad_l, grad_l+1) = +-cos(J_l, J_l+1),
and the sign of (sigma(z_l) - y)(sigma(z_l+1) - y) is always positive (sigma - 1 < 0 < sigma - 0 for both heads).
So for binary outputs U does not depend on the label or the probabilities at all: it is a property of the
network's Jacobians (tested). From three classes on, the logit gradient p - onehot(y) changes direction with y and the
probabilities, and so does U. All four data sets of the paper are binary.

Modes (``mode``):

- ``"exact"``: the definition above, exactly (the ground truth). ``G_k(p) = d CE_k(p) / d C1_l`` is built per head
  pair by one of two routes that give the same numbers (``exact_method``): *forward* mode, one Jacobian-vector
  product per entry of C1_l (``torch.func.jvp`` + ``vmap`` over the C x C_in weight directions, every pixel of the
  batch at once; C x C_in passes, independent of the image size), or *reverse* mode, ``u_k,p(q) = d CE_k(p) / d
  (C1_l a_l)(q)`` from vector-Jacobian products batched over pixels (``is_grads_batched``) then ``G_k(p) = sum_q
  u_k,p(q) a_l(q)^T`` (2 N passes per image, N = pixels). ``"auto"`` picks the fewer passes per pair. ``pixels=``
  restricts the reverse route to chosen pixels (2 n passes), for studies on volumes too large for a full map.
- ``"sketch"``: an unbiased random-projection estimator of the exact map. For k probe directions v_j in C1_l's
  weight space, one forward-mode JVP per probe gives, for every pixel at once, ``s_j(p) = <grad_l(p), v_j>`` and
  ``t_j(p) = <grad_l+1(p), v_j>``; then ``(1/k) sum_j s_j t_j`` estimates ``<grad_l, grad_l+1>`` (unbiased for
  probes with E[v v^T] = I) and the cosine is estimated by ``sum_j s_j t_j / (|s| |t|)``. Gaussian probes
  (``probes="gaussian"``): error falls as 1/sqrt(k); orthogonal probes (``"orthogonal"``, a seeded random
  orthonormal set scaled by sqrt(C C_in)): with k = C x C_in probes they span the weight space and the sketch *is*
  the exact map (up to rounding). Cost: k (L-1) JVP passes, independent of the image size.
- ``"summed"``: NOT an estimator of the exact map (it used to be called ``"fast"``). It differentiates the loss
  *summed over all pixels*, ``d (sum_p CE_k(p)) / d C1_l = sum_q g_k(q) a_l(q)^T`` with ``g_k(q)`` the gradient
  w.r.t. Conv1_l's output at position q of the coarse stage grid, takes the cosine of the two heads' rank-one
  terms at each q (``cos(g_l(q), g_l+1(q))``; a_l(q) cancels) and resizes it to the output grid. That is a
  different quantity, with cross-pixel terms the definition lacks (every pixel's loss contributes to every g(q)
  within the receptive field), hence its blob-like maps; its agreement with ``"exact"`` is measured in
  ``docs/uncertainty.md``. Cost: one forward plus one backward pass per head.

Gradients are switched on locally (inferers run under ``torch.no_grad()``). While computing, only the heads'
Conv1 weights require grad (so the encoder runs without a graph); every ``requires_grad`` flag is restored after,
and nothing is written to any ``.grad``. Keep the network in ``eval()`` mode.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jvp, vmap

from eunets_monai.networks.nets.base import EUNetBase, EUNetOutputs, HeadOutputs

__all__ = [
    "MODES",
    "EXACT_METHODS",
    "PROBES",
    "collaboration_gradient",
    "collaboration_outputs",
    "collaboration_gradient_reference",
    "collaboration_to_unit",
    "sketch_probes",
    "gradient_projections",
]

MODES = ("exact", "sketch", "summed")
EXACT_METHODS = ("auto", "forward", "reverse")
PROBES = ("gaussian", "orthogonal")
EPS = 1e-20  # only guards exact zeros: float32 gradients of confident pixels can be ~1e-8 and must keep their cosine


@contextmanager
def _gradients_for_conv1(net: EUNetBase) -> Iterator[None]:
    """Grad mode on and only the heads' Conv1 weights requiring grad, restoring every flag afterwards."""
    params = list(net.parameters())
    flags = [p.requires_grad for p in params]
    keep = {id(h.conv1.weight) for h in net.heads}
    try:
        for p in params:
            p.requires_grad_(id(p) in keep)
        with torch.enable_grad():
            yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


def _check_net(net: EUNetBase) -> None:
    if not hasattr(net, "forward_explained"):
        raise TypeError(
            f"the collaboration gradient needs an EU network (forward_explained), got {type(net).__name__}."
        )
    if net.heads is None or len(net.heads) < 2:
        raise ValueError(f"the collaboration gradient needs at least 2 MHEX+ heads; {type(net).__name__} has none/one.")


def _labels(logits: torch.Tensor, label: torch.Tensor | None) -> torch.Tensor:
    """(B, *S) integer labels: the model's own prediction, or the given (B, 1, *S) / (B, *S) label map."""
    if label is None:
        return (logits[:, 0] > 0).long() if logits.shape[1] == 1 else logits.argmax(1)
    label = torch.as_tensor(label, device=logits.device)
    if label.ndim == logits.ndim:
        label = label[:, 0]
    if tuple(label.shape) != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(f"label shape {tuple(label.shape)} does not match the logits {tuple(logits.shape)}.")
    label = label.long()
    top = max(logits.shape[1], 2)
    if label.min() < 0 or label.max() >= top:
        raise ValueError(f"label values must lie in [0, {top - 1}], got [{int(label.min())}, {int(label.max())}].")
    return label


def _pixel_losses(outputs: EUNetOutputs, label: torch.Tensor | None) -> list[torch.Tensor]:
    """CE_k(p) of every head's deep prediction on the output grid, deepest head first, each (B, *S)."""
    y = _labels(outputs.logits.detach(), label)
    losses = []
    for h in outputs.heads:
        pred = outputs.to_output_grid(h.prediction)
        if pred.shape[1] == 1:
            losses.append(F.binary_cross_entropy_with_logits(pred[:, 0], y.to(pred.dtype), reduction="none"))
        else:
            losses.append(F.cross_entropy(pred, y, reduction="none"))
    return losses


def _cosine(a: torch.Tensor, b: torch.Tensor, dim: int) -> torch.Tensor:
    return (a * b).sum(dim) / (a.norm(dim=dim) * b.norm(dim=dim) + EPS)


def collaboration_to_unit(cosines: torch.Tensor, num_pairs: int) -> torch.Tensor:
    """
    Map U in [-P, P] (P = L - 1 pairs) to ``(U + P) / (2 P)`` in [0, 1], keeping the paper's orientation (and order).

    Examples::

        >>> collaboration_to_unit(torch.tensor([-2.0, 0.0, 2.0]), 2)
        tensor([0.0000, 0.5000, 1.0000])
    """
    return ((cosines + num_pairs) / (2 * num_pairs)).clamp(0.0, 1.0)


def collaboration_gradient_reference(
    net: EUNetBase, x: torch.Tensor, label: torch.Tensor | None = None
) -> torch.Tensor:
    """
    U(p) by brute force: two ``torch.autograd.grad`` calls per pixel and pair. Tiny inputs only (tests).

    Args:
        net: an EU network in eval mode with >= 2 MHEX+ heads.
        x: input (B, C_in, *S).
        label: optional label map (B, 1, *S); default: the model's own prediction.

    Returns:
        (B, 1, *S), values in [-(L-1), L-1].
    """
    _check_net(net)
    with _gradients_for_conv1(net):
        outputs = net.forward_explained(x)
        losses = _pixel_losses(outputs, label)
        out = torch.zeros(losses[0].shape, dtype=x.dtype, device=x.device)
        for idx in itertools.product(*(range(s) for s in out.shape)):
            for l in range(len(losses) - 1):
                weight = outputs.heads[l].head.conv1.weight
                (g_own,) = torch.autograd.grad(losses[l][idx], weight, retain_graph=True)
                (g_next,) = torch.autograd.grad(losses[l + 1][idx], weight, retain_graph=True)
                out[idx] += _cosine(g_own.flatten(), g_next.flatten(), 0)
    return out.unsqueeze(1)


def _pixel_gradients(
    loss: torch.Tensor, hidden: torch.Tensor, features: torch.Tensor, pixels: torch.Tensor
) -> torch.Tensor:
    """
    d loss[p] / d C1 for the flat pixel indices ``pixels`` (n,) of a one-image loss map (1, *S), as (n, C * C_in).
    """
    onehot = torch.zeros(len(pixels), loss.numel(), dtype=loss.dtype, device=loss.device)
    onehot[torch.arange(len(pixels)), pixels] = 1
    (u,) = torch.autograd.grad(
        loss, hidden, onehot.view(len(pixels), *loss.shape), retain_graph=True, is_grads_batched=True
    )
    u = (u * (hidden > 0))[:, 0].flatten(2)  # through the ReLU: d/dZ = d/dY where Z > 0; (n, C, positions)
    return torch.einsum("ncs,js->ncj", u, features.flatten(1)).flatten(1)


class _PairLosses(nn.Module):
    """CE_l and CE_l+1 per pixel as a module, so ``functional_call`` can substitute Conv1_l's weight."""

    def __init__(self, net: EUNetBase, l: int, labels: torch.Tensor) -> None:
        super().__init__()
        self.net, self.l, self.labels = net, l, labels

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        losses = _pixel_losses(self.net.forward_explained(x), self.labels)
        return losses[self.l], losses[self.l + 1]


def sketch_probes(
    num_weights: int, num_probes: int, probes: str = "gaussian", seed: int = 0, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """
    k probe directions in a weight space of ``num_weights`` entries, with E[v v^T] = I (so that
    ``(1/k) sum_j <a, v_j> <b, v_j>`` is an unbiased estimate of ``<a, b>``).

    Args:
        num_weights: n = C x C_in, the size of Conv1's weight.
        num_probes: k.
        probes: ``"gaussian"`` (i.i.d. N(0, 1) entries) or ``"orthogonal"`` (k <= n rows of a random orthonormal
            basis, scaled by sqrt(n); k = n gives ``sum_j v_j v_j^T = n I`` exactly).
        seed: seeds a CPU generator, so the probes do not depend on the device or the global RNG.
        dtype: dtype of the result.

    Returns:
        (k, n).

    Examples::

        >>> sketch_probes(6, 6, "orthogonal", dtype=torch.float64).T.matmul(sketch_probes(6, 6, "orthogonal",
        ...     dtype=torch.float64)).diagonal()   # = 6 I
        tensor([6., 6., 6., 6., 6., 6.], dtype=torch.float64)
    """
    if probes not in PROBES:
        raise ValueError(f"probes must be one of {PROBES}, got {probes!r}.")
    if num_probes < 1:
        raise ValueError(f"num_probes must be >= 1, got {num_probes}.")
    gen = torch.Generator().manual_seed(seed)
    if probes == "gaussian":
        return torch.randn(num_probes, num_weights, generator=gen, dtype=torch.float64).to(dtype)
    if num_probes > num_weights:
        raise ValueError(f"orthogonal probes: num_probes {num_probes} exceeds the {num_weights} weights.")
    q, r = torch.linalg.qr(torch.randn(num_weights, num_probes, generator=gen, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))  # a uniformly random orthonormal set (QR's sign convention removed)
    return (q.T * math.sqrt(num_weights)).to(dtype)


def gradient_projections(
    net: EUNetBase,
    x: torch.Tensor,
    pair: int,
    probes: torch.Tensor,
    label: torch.Tensor | None = None,
    chunk_size: int = 16,
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    ``<grad_l(p), v_j>`` and ``<grad_l+1(p), v_j>`` for every pixel p and probe v_j (l = ``pair``): one forward-mode
    JVP per probe (``torch.func.jvp`` batched by ``vmap``), every pixel at once.

    Args:
        net: an EU network in eval mode with >= 2 MHEX+ heads.
        x: input (B, C_in, *S).
        pair: l, the head pair (l, l+1), 0 = deepest.
        probes: (k, C x C_in) directions in head l's Conv1 weight space (e.g. :py:func:`sketch_probes`; the
            identity gives the full per-pixel gradients).
        label: optional label map (B, 1, *S); default: the model's own prediction.
        chunk_size: probes per vmapped batch (memory vs speed).

    Returns:
        ``(own, nxt)``, each (k, B, *S).

    Examples::

        >>> net = EUNet(2, 1, 3, channels=(4, 8, 16)).eval()
        >>> own, nxt = gradient_projections(net, torch.rand(1, 1, 16, 16), 0, sketch_probes(16, 8))
        >>> own.shape
        torch.Size([8, 1, 16, 16])
    """
    _check_net(net)
    if not 0 <= pair < len(net.heads) - 1:
        raise ValueError(f"pair must lie in [0, {len(net.heads) - 2}], got {pair}.")
    weight = net.heads[pair].conv1.weight
    if probes.ndim != 2 or probes.shape[1] != weight.numel():
        raise ValueError(f"probes must be (k, {weight.numel()}) for head {pair}'s Conv1, got {tuple(probes.shape)}.")
    with _gradients_for_conv1(net), torch.no_grad():
        labels = _labels(net.forward_explained(x).logits, label)
        return _projections(net, x, labels, pair, probes.to(weight), chunk_size)


def _projections(
    net: EUNetBase, x: torch.Tensor, labels: torch.Tensor, l: int, probes: torch.Tensor, chunk_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(k, B, *S) twice: JVPs of CE_l and CE_l+1 along each probe of Conv1_l's weight."""
    weight = net.heads[l].conv1.weight
    name = "net." + next(n for n, p in net.named_parameters() if p is weight)
    module = _PairLosses(net, l, labels)

    def losses(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return functional_call(module, {name: w}, (x,))

    tangents = probes.view(-1, *weight.shape)
    with torch.no_grad():  # forward-mode only; no graph
        return vmap(lambda t: jvp(losses, (weight.detach(),), (t,))[1], chunk_size=chunk_size)(tangents)


def _forward_mode_pair(net: EUNetBase, x: torch.Tensor, labels: torch.Tensor, l: int, chunk_size: int) -> torch.Tensor:
    """Per-pixel cosines of pair (l, l+1) from one JVP per entry of C1_l (all pixels at once): (B, N)."""
    weight = net.heads[l].conv1.weight
    basis = torch.eye(weight.numel(), dtype=weight.dtype, device=weight.device)
    own, nxt = _projections(net, x, labels, l, basis, chunk_size)
    return _cosine(own.flatten(2), nxt.flatten(2), 0)


def _sketch_cosines(
    net: EUNetBase, x: torch.Tensor, labels: torch.Tensor, num_probes: int, probes: str, seed: int, chunk_size: int
) -> torch.Tensor:
    total = 0
    for l in range(len(net.heads) - 1):
        weight = net.heads[l].conv1.weight
        v = sketch_probes(weight.numel(), num_probes, probes, seed + l, weight.dtype).to(weight.device)
        try:
            own, nxt = _projections(net, x, labels, l, v, chunk_size)
        except NotImplementedError as e:  # an op without forward-mode AD (e.g. fused attention on CPU)
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise NotImplementedError(f"mode='sketch' needs forward-mode AD ({reason}); use mode='exact'.") from e
        total = total + _cosine(own, nxt, 0)
    return total.view(labels.shape[0], 1, *labels.shape[1:])


def _reverse_mode_pairs(
    net: EUNetBase, x: torch.Tensor, labels: torch.Tensor, pairs: list[int], chunk_size: int, pixels: torch.Tensor
) -> torch.Tensor:
    """Cosines at the flat ``pixels`` (n,), summed over ``pairs``, from batched VJPs per pixel and head: (B, n)."""
    total = torch.zeros(labels.shape[0], len(pixels), dtype=x.dtype, device=x.device)
    for b in range(x.shape[0]):  # one image at a time bounds the batched VJPs' memory
        outputs = net.forward_explained(x[b : b + 1])
        losses = _pixel_losses(outputs, labels[b : b + 1])
        for l in pairs:
            hidden, feats = outputs.heads[l].hidden, outputs.heads[l].features[0]
            for start in range(0, len(pixels), chunk_size):
                chunk = pixels[start : start + chunk_size]
                g_own = _pixel_gradients(losses[l], hidden, feats, chunk)
                g_next = _pixel_gradients(losses[l + 1], hidden, feats, chunk)
                total[b, start : start + len(chunk)] += _cosine(g_own, g_next, 1)
    return total


def _exact_cosines(
    net: EUNetBase, x: torch.Tensor, labels: torch.Tensor, chunk_size: int, method: str, pixels: torch.Tensor | None
) -> torch.Tensor:
    """Exact U at every pixel (B, 1, *S), or at the flat ``pixels`` (B, n)."""
    size = labels[0].numel()
    chosen = torch.arange(size, device=x.device) if pixels is None else pixels
    # Per pair: C x C_in JVPs (forward, always the full map) or 2 n VJPs per image (reverse); "auto": the fewer.
    forward = [
        method == "forward" or (method == "auto" and net.heads[l].conv1.weight.numel() <= 2 * len(chosen))
        for l in range(len(net.heads) - 1)
    ]
    total = torch.zeros(labels.shape[0], len(chosen), dtype=x.dtype, device=x.device)
    reverse = [l for l, use_forward in enumerate(forward) if not use_forward]
    for l in (l for l, use_forward in enumerate(forward) if use_forward):
        try:
            total += _forward_mode_pair(net, x, labels, l, chunk_size)[:, chosen]
        except NotImplementedError as e:  # an op without forward-mode AD (e.g. fused attention on CPU)
            if method == "forward":
                reason = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise NotImplementedError(f"exact_method='forward' impossible here ({reason}); use 'reverse'.") from e
            reverse.append(l)
    if reverse:
        total += _reverse_mode_pairs(net, x, labels, reverse, chunk_size, chosen)
    return total if pixels is not None else total.view(labels.shape[0], 1, *labels.shape[1:])


def _summed_cosines(net: EUNetBase, x: torch.Tensor, label: torch.Tensor | None) -> tuple[EUNetOutputs, torch.Tensor]:
    outputs = net.forward_explained(x)
    # Images are independent in eval mode, so the batch-summed loss gives each image's own gradients.
    totals = [loss.sum() for loss in _pixel_losses(outputs, label)]
    hidden = [h.hidden for h in outputs.heads]
    last = len(totals) - 1
    own: list[torch.Tensor] = []  # d sum CE_l / d Y_l, l = 0 .. L-2
    nxt: list[torch.Tensor] = []  # d sum CE_l+1 / d Y_l
    for k, total in enumerate(totals):
        inputs = ([hidden[k]] if k < last else []) + ([hidden[k - 1]] if k > 0 else [])
        grads = torch.autograd.grad(total, inputs, retain_graph=k < last)
        if k < last:
            own.append(grads[0])
        if k > 0:
            nxt.append(grads[-1])
    cos = 0
    for l in range(last):
        mask = hidden[l] > 0  # through the ReLU: gradients w.r.t. Conv1's output
        cos = cos + outputs.to_output_grid(_cosine(own[l] * mask, nxt[l] * mask, 1).unsqueeze(1))
    return outputs, cos


def _check_pixels(pixels: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor | None:
    if pixels is None:
        return None
    pixels = torch.as_tensor(pixels, device=x.device).long().flatten()
    size = math.prod(x.shape[2:])
    if len(pixels) and (pixels.min() < 0 or pixels.max() >= size):
        raise ValueError(
            f"pixels must be flat indices in [0, {size - 1}], got [{int(pixels.min())}, {int(pixels.max())}]."
        )
    return pixels


def collaboration_outputs(
    net: EUNetBase,
    x: torch.Tensor,
    label: torch.Tensor | None = None,
    mode: str = "sketch",
    num_probes: int = 32,
    probes: str = "gaussian",
    seed: int = 0,
    chunk_size: int = 256,
    exact_method: str = "auto",
    pixels: torch.Tensor | None = None,
) -> tuple[EUNetOutputs, torch.Tensor]:
    """
    The network's explained forward pass together with U (see :py:func:`collaboration_gradient`).

    In summed mode both come from the same forward pass; in the other modes the outputs come from one extra forward
    pass without a graph (which also gives the labels). The outputs' tensors are detached.

    Returns:
        ``(outputs, U)``: :py:class:`EUNetOutputs` and U, (B, 1, *S) (or (B, n) with ``pixels``).
    """
    _check_net(net)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
    if exact_method not in EXACT_METHODS:
        raise ValueError(f"exact_method must be one of {EXACT_METHODS}, got {exact_method!r}.")
    if label is not None and label.shape[0] != x.shape[0]:
        raise ValueError(f"label batch {label.shape[0]} does not match the input batch {x.shape[0]}.")
    if pixels is not None and mode != "exact":
        raise ValueError(
            f"pixels= is for mode='exact' (the other modes cost the same for the whole map), got {mode!r}."
        )
    pixels = _check_pixels(pixels, x)
    with _gradients_for_conv1(net):
        if mode == "summed":
            outputs, cos = _summed_cosines(net, x, label)
        else:
            with torch.no_grad():
                outputs = net.forward_explained(x)
            labels = _labels(outputs.logits, label)
            if mode == "exact":
                cos = _exact_cosines(net, x, labels, chunk_size, exact_method, pixels)
            else:
                cos = _sketch_cosines(net, x, labels, num_probes, probes, seed, min(chunk_size, num_probes))
    heads = [
        HeadOutputs(h.stage, h.features.detach(), h.hidden.detach(), h.prediction.detach(), h.head)
        for h in outputs.heads
    ]
    return EUNetOutputs(outputs.logits.detach(), heads, outputs.grid_shape, outputs.crop), cos.detach()


def collaboration_gradient(
    net: EUNetBase,
    x: torch.Tensor,
    label: torch.Tensor | None = None,
    mode: str = "sketch",
    num_probes: int = 32,
    probes: str = "gaussian",
    seed: int = 0,
    chunk_size: int = 256,
    exact_method: str = "auto",
    pixels: torch.Tensor | None = None,
) -> torch.Tensor:
    """
    The collaboration gradient U(p) = sum over adjacent head pairs of cos(grad_l(p), grad_l+1(p)), in the paper's
    orientation (see the module docstring for the modes, the orientation and the binary case).

    Args:
        net: an EU network (``forward_explained``, >= 2 MHEX+ heads), in eval mode.
        x: input (B, C_in, *S); runs under ``torch.no_grad()`` too.
        label: optional label map (B, 1, *S) (e.g. the ground truth); default: the model's own prediction.
        mode: ``"exact"`` (the definition), ``"sketch"`` (its random-projection estimate) or ``"summed"`` (the
            cosine of the summed loss's per-position gradients: a different quantity, not an estimate of exact).
        num_probes: sketch mode: k probes per head pair.
        probes: sketch mode: ``"gaussian"`` or ``"orthogonal"`` (see :py:func:`sketch_probes`).
        seed: sketch mode: pair l uses probes seeded ``seed + l``.
        chunk_size: exact mode: pixels per batched VJP / weight entries per batched JVP; sketch: probes per batch.
        exact_method: exact mode's route per head pair: ``"forward"`` (one JVP per entry of C1_l, all pixels at
            once), ``"reverse"`` (one VJP per pixel and head), ``"auto"`` (the fewer passes); same result.
        pixels: exact mode only: flat indices (n,) into *S; then only those pixels are computed (reverse route,
            2 n VJPs per pair and image) and the result is (B, n).

    Returns:
        (B, 1, *S) (or (B, n) with ``pixels``), values in [-(L-1), L-1]; high = the heads' gradients agree, which
        the paper reads as high uncertainty. :py:func:`collaboration_to_unit` maps it to [0, 1].

    Examples::

        >>> net = EUNet(2, 1, 3, channels=(4, 8, 16)).eval()
        >>> collaboration_gradient(net, torch.rand(1, 1, 16, 16), mode="sketch", num_probes=16).shape
        torch.Size([1, 1, 16, 16])
    """
    return collaboration_outputs(net, x, label, mode, num_probes, probes, seed, chunk_size, exact_method, pixels)[1]
