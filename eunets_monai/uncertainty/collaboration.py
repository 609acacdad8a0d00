"""
The collaboration gradient (EU-Nets, Sun & Lio, sec. 3.5): do adjacent MHEX+ heads pull head l's Conv1 the same
way at a pixel?

For a pixel p and each pair of adjacent heads (l, l+1), l = 0 the deepest:

.. code-block:: text

    grad_l(p)   = d CE_l(p)   / d C1_l          C1_l = head l's Conv1 weight (C x C_in)
    grad_l+1(p) = d CE_l+1(p) / d C1_l          (reaches C1_l through the gated features on the decoder path)
    U(p)        = sum_{l=0}^{L-2} cos(grad_l(p), grad_l+1(p)),   cos(a, b) = a.b / (|a| |b| + eps)
    uncertainty = (L - 1 - U(p)) / (2 (L - 1))                   in [0, 1], 0 = every pair agrees

Interpretation choices (the paper leaves them open):

- **Grid.** CE_k(p) is the cross-entropy of head k's deep prediction resized to the output grid
  (``EUNetOutputs.deep_predictions``: bi-/trilinear, internal padding cropped), exactly the maps deep supervision
  trains on; p runs over the output (= input) pixels.
- **Label.** The model's own predicted class, argmax of the final logits (logit > 0 for a single-channel sigmoid
  output, with binary cross-entropy); a given label map (e.g. the ground truth, for analysis) replaces it.
- **Sign.** cos = 1 means both heads' losses would move C1_l the same way (consensus). The paper calls the
  cosine sum U "uncertainty", but it grows with agreement; the exposed map flips it so that it grows with doubt.
  A zero gradient (e.g. all of Conv1's units dead at the pixel's positions) gives cos = 0, the neutral value.

Modes:

- ``"exact"``: the definition above, exactly. ``G_k(p) = d CE_k(p) / d C1_l`` is built per head pair by one of
  two routes that give the same numbers (``exact_method``): *forward* mode, one Jacobian-vector product per entry
  of C1_l (``torch.func.jvp`` + ``vmap`` over the C x C_in weight directions, every pixel of the batch at once;
  C x C_in passes, independent of the image size), or *reverse* mode, ``u_k,p(q) = d CE_k(p) / d (C1_l a_l)(q)``
  from vector-Jacobian products batched over pixels (``is_grads_batched``) then ``G_k(p) = sum_q u_k,p(q)
  a_l(q)^T`` (2 N passes per image, N = pixels). ``"auto"`` picks the fewer passes per pair. Either way the cost
  is tens to thousands of decoder passes: meant for small inputs, 2D slices and agreement studies.
- ``"fast"``: the rank-one decomposition. ``d (sum_p CE_k(p)) / d C1_l = sum_q g_k(q) a_l(q)^T`` with
  ``g_k(q)`` the gradient of head k's *summed* loss w.r.t. Conv1_l's output at position q (stage-l grid); two
  such terms at the same q have cosine ``cos(g_l(q), g_l+1(q))`` (a_l(q) cancels). The per-pair cosine map is
  resized (bi-/trilinear) to the output grid and summed over pairs. Cost: one forward pass plus one backward pass
  per head (L), any image size; it is the position-wise agreement of the heads' *total* losses, not the per-pixel
  definition, so its agreement with ``"exact"`` is measured on real data by the evaluation script.

Gradients are switched on locally (inferers run under ``torch.no_grad()``). While computing, only the heads'
Conv1 weights require grad (so the encoder runs without a graph); every ``requires_grad`` flag is restored after,
and nothing is written to any ``.grad``. Keep the network in ``eval()`` mode.
"""

from __future__ import annotations

import itertools
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
    "collaboration_gradient",
    "collaboration_cosines",
    "collaboration_outputs",
    "collaboration_gradient_reference",
    "collaboration_cosines_reference",
    "cosines_to_uncertainty",
]

MODES = ("fast", "exact")
EXACT_METHODS = ("auto", "forward", "reverse")
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


def cosines_to_uncertainty(cosines: torch.Tensor, num_pairs: int) -> torch.Tensor:
    """``(P - U) / (2 P)`` clamped to [0, 1], for the cosine sum U over P = L - 1 pairs: 0 = full agreement."""
    return ((num_pairs - cosines) / (2 * num_pairs)).clamp(0.0, 1.0)


def collaboration_cosines_reference(net: EUNetBase, x: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
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


def collaboration_gradient_reference(
    net: EUNetBase, x: torch.Tensor, label: torch.Tensor | None = None
) -> torch.Tensor:
    """Brute-force uncertainty map (B, 1, *S) in [0, 1]; see :py:func:`collaboration_cosines_reference`."""
    return cosines_to_uncertainty(collaboration_cosines_reference(net, x, label), len(net.heads) - 1)


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


def _forward_mode_pair(net: EUNetBase, x: torch.Tensor, labels: torch.Tensor, l: int, chunk_size: int) -> torch.Tensor:
    """Per-pixel cosines of pair (l, l+1) from one JVP per entry of C1_l (all pixels at once): (B, N)."""
    weight = net.heads[l].conv1.weight
    name = "net." + next(n for n, p in net.named_parameters() if p is weight)
    module = _PairLosses(net, l, labels)

    def losses(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return functional_call(module, {name: w}, (x,))

    basis = torch.eye(weight.numel(), dtype=weight.dtype, device=weight.device).view(-1, *weight.shape)
    with torch.no_grad():  # forward-mode only; no graph
        own, nxt = vmap(lambda t: jvp(losses, (weight.detach(),), (t,))[1], chunk_size=chunk_size)(basis)
    return _cosine(own.flatten(1), nxt.flatten(1), 0).view(x.shape[0], -1)


def _reverse_mode_pairs(
    net: EUNetBase, x: torch.Tensor, labels: torch.Tensor, pairs: list[int], chunk_size: int
) -> torch.Tensor:
    """Per-pixel cosines summed over ``pairs``, from batched VJPs, one per pixel and head: (B, N)."""
    total = torch.zeros(labels.shape[0], labels[0].numel(), dtype=x.dtype, device=x.device)
    for b in range(x.shape[0]):  # one image at a time bounds the batched VJPs' memory
        outputs = net.forward_explained(x[b : b + 1])
        losses = _pixel_losses(outputs, labels[b : b + 1])
        for l in pairs:
            hidden, feats = outputs.heads[l].hidden, outputs.heads[l].features[0]
            for start in range(0, total.shape[1], chunk_size):
                pixels = torch.arange(start, min(start + chunk_size, total.shape[1]), device=x.device)
                g_own = _pixel_gradients(losses[l], hidden, feats, pixels)
                g_next = _pixel_gradients(losses[l + 1], hidden, feats, pixels)
                total[b, pixels] += _cosine(g_own, g_next, 1)
    return total


def _exact_cosines(net: EUNetBase, x: torch.Tensor, labels: torch.Tensor, chunk_size: int, method: str) -> torch.Tensor:
    pixels = labels[0].numel()
    # Per pair: C x C_in JVPs (forward) or 2 N VJPs per image (reverse); "auto" takes the fewer.
    forward = [
        method == "forward" or (method == "auto" and net.heads[l].conv1.weight.numel() <= 2 * pixels)
        for l in range(len(net.heads) - 1)
    ]
    total = torch.zeros(labels.shape[0], pixels, dtype=x.dtype, device=x.device)
    reverse = [l for l, use_forward in enumerate(forward) if not use_forward]
    for l in (l for l, use_forward in enumerate(forward) if use_forward):
        try:
            total += _forward_mode_pair(net, x, labels, l, chunk_size)
        except NotImplementedError as e:  # an op without forward-mode AD (e.g. fused attention on CPU)
            if method == "forward":
                reason = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise NotImplementedError(f"exact_method='forward' impossible here ({reason}); use 'reverse'.") from e
            reverse.append(l)
    if reverse:
        total += _reverse_mode_pairs(net, x, labels, reverse, chunk_size)
    return total.view(labels.shape[0], 1, *labels.shape[1:])


def _fast_cosines(net: EUNetBase, x: torch.Tensor, label: torch.Tensor | None) -> tuple[EUNetOutputs, torch.Tensor]:
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


def collaboration_outputs(
    net: EUNetBase,
    x: torch.Tensor,
    label: torch.Tensor | None = None,
    mode: str = "fast",
    chunk_size: int = 256,
    exact_method: str = "auto",
) -> tuple[EUNetOutputs, torch.Tensor]:
    """
    The network's explained forward pass together with the cosine sum U (see :py:func:`collaboration_cosines`).

    In fast mode both come from the same forward pass, so a caller that also needs the logits and CAMs (the
    explained predictor) pays for one forward pass only; in exact mode the outputs come from one extra forward
    pass without a graph (which also gives the labels). The outputs' tensors are detached.

    Returns:
        ``(outputs, cosines)``: :py:class:`EUNetOutputs` and (B, 1, *S) in [-(L-1), L-1].
    """
    _check_net(net)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
    if exact_method not in EXACT_METHODS:
        raise ValueError(f"exact_method must be one of {EXACT_METHODS}, got {exact_method!r}.")
    if label is not None and label.shape[0] != x.shape[0]:
        raise ValueError(f"label batch {label.shape[0]} does not match the input batch {x.shape[0]}.")
    with _gradients_for_conv1(net):
        if mode == "exact":
            with torch.no_grad():
                outputs = net.forward_explained(x)
            cos = _exact_cosines(net, x, _labels(outputs.logits, label), chunk_size, exact_method)
        else:
            outputs, cos = _fast_cosines(net, x, label)
    heads = [
        HeadOutputs(h.stage, h.features.detach(), h.hidden.detach(), h.prediction.detach(), h.head)
        for h in outputs.heads
    ]
    return EUNetOutputs(outputs.logits.detach(), heads, outputs.grid_shape, outputs.crop), cos.detach()


def collaboration_cosines(
    net: EUNetBase,
    x: torch.Tensor,
    label: torch.Tensor | None = None,
    mode: str = "fast",
    chunk_size: int = 256,
    exact_method: str = "auto",
) -> torch.Tensor:
    """
    The raw cosine sum U(p) over the L - 1 adjacent head pairs (see the module docstring for both modes).

    Args:
        net: an EU network (``forward_explained``, >= 2 MHEX+ heads), in eval mode.
        x: input (B, C_in, *S); runs under ``torch.no_grad()`` too.
        label: optional label map (B, 1, *S) (e.g. the ground truth); default: the model's own prediction.
        mode: ``"fast"`` or ``"exact"``.
        chunk_size: exact mode: pixels per batched VJP / weight entries per batched JVP (memory vs speed).
        exact_method: exact mode's route per head pair: ``"forward"`` (one JVP per entry of C1_l, all pixels at
            once), ``"reverse"`` (one VJP per pixel and head), ``"auto"`` (the fewer passes); same result.

    Returns:
        (B, 1, *S), values in [-(L-1), L-1]; high = the heads agree.

    Examples::

        >>> net = EUNet(2, 1, 2, channels=(4, 8, 16)).eval()
        >>> collaboration_cosines(net, torch.rand(1, 1, 16, 16), mode="exact").shape
        torch.Size([1, 1, 16, 16])
    """
    return collaboration_outputs(net, x, label, mode, chunk_size, exact_method)[1]


def collaboration_gradient(
    net: EUNetBase,
    x: torch.Tensor,
    label: torch.Tensor | None = None,
    mode: str = "fast",
    chunk_size: int = 256,
    exact_method: str = "auto",
) -> torch.Tensor:
    """
    Collaboration-gradient uncertainty ``(L - 1 - U) / (2 (L - 1))``: (B, 1, *S) in [0, 1], growing with doubt.

    Args:
        net: an EU network (``forward_explained``, >= 2 MHEX+ heads), in eval mode.
        x: input (B, C_in, *S).
        label: optional label map (B, 1, *S); default: the model's own prediction.
        mode: ``"fast"`` (one forward + one backward per head) or ``"exact"`` (per-pixel gradients).
        chunk_size: exact mode: pixels per batched VJP / weight entries per batched JVP.
        exact_method: ``"auto"``, ``"forward"`` or ``"reverse"``, see :py:func:`collaboration_cosines`.

    Examples::

        >>> net = EUNet(3, 1, 2, channels=(4, 8, 16)).eval()
        >>> u = collaboration_gradient(net, torch.rand(1, 1, 16, 16, 16))
        >>> bool(u.min() >= 0 and u.max() <= 1)
        True
    """
    return cosines_to_uncertainty(
        collaboration_cosines(net, x, label, mode, chunk_size, exact_method), len(net.heads) - 1
    )
