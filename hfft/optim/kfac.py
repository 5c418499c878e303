"""K-FAC: Kronecker factors of the Fisher/GGN of a mini-batch loss, and their damped inverse.

For a layer with weight ``W`` (``d_out × d_in``, a convolution's kernel
flattened to ``d_out × (C_in·k)``) and bias ``b``, K-FAC (Martens & Grosse
2015) approximates the layer's block of the curvature ``C`` of the mean loss by

    ``C_ℓ ≈ G ⊗ A``  on ``[W b]`` flattened row by row, i.e.  ``C_ℓ vec(M) = vec(G M A)``,

with ``A`` the second moment of the layer's inputs ``a`` (with a ones column
when the bias is optimised too) and ``G`` that of the gradients ``g`` with
respect to the layer's outputs. A convolution is a linear layer applied at
every output position to an unfolded input patch; its factors sum over those
positions (the KFC, or *expand*, approximation of Grosse & Martens 2016 and
Eschenhagen et al. 2023), and a ``Conv1d`` is a ``Conv2d`` of height 1. With
``N`` examples in the batch and ``O`` positions per example (1 for a dense
layer on vectors):

    ``A = 1/(N·O) Σ_{n,o} a_{n,o} a_{n,o}ᵀ``,   ``G = Σ_{n,o,c} g_{n,o,c} g_{n,o,c}ᵀ``

where ``g_{n,o,c}`` is the layer-output part of the ``c``-th output gradient
of the Fisher type (:mod:`hfft.optim.fisher`): the columns of the output
Hessian's square root for ``"type-2"`` (then K-FAC is exact for one dense layer
and one example), a sampled label's or the true label's loss gradient for
``"mc"`` and ``"empirical"``, scaled to estimate the Fisher of the mean loss.

These are the conventions of curvlinops' ``KFACLinearOperator`` (with
``separate_weight_and_bias=False``, ``kfac_approx="expand"``), which the tests
hold; hfft computes the factors itself because curvlinops supports only
``Linear`` and ``Conv2d`` and hfft's MNIST-1D model is a ``Conv1d`` network.

:meth:`KFAC.inverse` applies ``(C_ℓ + λ I)⁻¹`` approximately by factored
Tikhonov damping (Martens & Grosse 2015, §6.3): ``(G + √λ/π I)⁻¹ M (A + π√λ
I)⁻¹`` with ``π = √((tr A / dim A) / (tr G / dim G))``, the choice that
minimises the norm of the damping's cross terms. Parameters that no supported
layer holds are treated as the identity: ``1/λ`` in the inverse, 0 in
:meth:`KFAC.matvec`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from hfft._text import clipped
from hfft.optim.batches import Batchable, batch_size, take
from hfft.optim.fisher import FISHER_TYPES, output_gradients
from hfft.optim.flat import FlatSpace
from hfft.optim.output_hessians import Loss, loss_normaliser

__all__ = ["FISHER_TYPES", "KFAC", "coverage", "unsupported_loss"]

_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)


@dataclass(frozen=True)
class _Block:
    """One layer's Kronecker factors and where its parameters sit in the flat vector.

    ``weight``/``bias`` are positions in ``params`` (``None`` when not optimised);
    ``A`` acts on ``[W b]``'s columns, ``G`` on its rows.
    """

    weight: int | None
    bias: int | None
    A: Tensor
    G: Tensor

    def matrix(self, parts: Sequence[Tensor]) -> Tensor:
        """``[W b]``-shaped view of a parameter-shaped list: ``d_out × (d_in [+ 1])``."""
        cols = []
        if self.weight is not None:
            cols.append(parts[self.weight].reshape(self.G.shape[0], -1))
        if self.bias is not None:
            cols.append(parts[self.bias].reshape(-1, 1))
        return torch.cat(cols, dim=1)

    def scatter(self, m: Tensor, out: list[Tensor]) -> None:
        """Write the columns of ``m`` back into the parameter-shaped list ``out``."""
        if self.weight is not None:
            w = out[self.weight]
            out[self.weight] = m[:, : w.numel() // m.shape[0]].reshape(w.shape)
        if self.bias is not None:
            out[self.bias] = m[:, -1].reshape(out[self.bias].shape)


@dataclass(frozen=True)
class KFAC:
    """K-FAC's Kronecker factors of the Fisher/GGN of the mean loss on one batch.

    Build it with :meth:`compute`. Supported layers: ``nn.Linear``,
    ``nn.Conv1d`` and ``nn.Conv2d`` (``groups=1``, zero padding); the
    parameters of any other module are listed in :attr:`uncovered`.

    Attributes:
        covered: Names (as ``model.named_parameters()`` gives them) of the
            parameters K-FAC approximates.
        uncovered: Names of the parameters it treats as the identity.
        fisher: The Fisher type the factors were computed with.
    """

    space: FlatSpace
    blocks: tuple[_Block, ...]
    covered: list[str]
    uncovered: list[str]
    fisher: str

    @classmethod
    def compute(
        cls,
        model: nn.Module,
        loss_fn: Loss,
        inputs: Batchable,
        targets: Tensor,
        params: Sequence[Tensor],
        *,
        fisher: str = "type-2",
        generator: torch.Generator | None = None,
        chunk_size: int | None = None,
    ) -> KFAC:
        """Compute the factors on the batch ``(inputs, targets)`` at the current parameters.

        The model is used in the mode it is in; hooks on its supported layers
        read their inputs and output gradients and are removed afterwards.

        Args:
            model: The network; its parameters are read, never changed.
            loss_fn: ``nn.CrossEntropyLoss`` (class-index targets, no class
                weights or label smoothing; :class:`ClassLastCrossEntropy` too)
                or ``nn.MSELoss``, with mean or sum reduction.
            inputs: Batch inputs, samples along dimension 0.
            targets: Batch targets.
            params: The parameters of the flat vectors :meth:`inverse` and
                :meth:`matvec` act on, in their order; all must require gradients.
            fisher: ``"type-2"``, ``"mc"`` or ``"empirical"`` (module docstring).
            generator: Random numbers for ``"mc"``'s labels (the global ones if
                ``None``).
            chunk_size: Accumulate over chunks of this many samples (the sums
                equal the full batch's; ``None`` for one chunk).

        Returns:
            The factors.

        Raises:
            ValueError: For an unsupported loss or Fisher type, a parameter that
                is not the model's or needs no gradient, or a bad chunk size.
        """
        _check_arguments(model, loss_fn, targets, params, fisher, chunk_size)
        layers = _layers(model, params)
        acc = _Accumulator(layers, total=batch_size(inputs))
        handles = [h for name, (module, *_) in layers.items() for h in acc.hook(name, module)]
        try:
            norm = loss_normaliser(loss_fn, targets)
            size = acc.total if chunk_size is None else min(chunk_size, acc.total)
            for a in range(0, acc.total, size):
                x, y = take(inputs, slice(a, a + size)), targets[a : a + size]
                _backpropagate(model, loss_fn, x, y, params, fisher, norm, generator, acc)
                acc.chunks += 1
        finally:
            for h in handles:
                h.remove()
        blocks = {name: acc.block(name) for name in layers if name in acc.A and name in acc.G}
        held = {i for name in blocks for i in layers[name][1:] if i is not None}
        covered, uncovered = _names(model, params, held)
        return cls(FlatSpace(params), tuple(blocks.values()), covered, uncovered, fisher)

    def matvec(self, v: Tensor) -> Tensor:
        """``K v`` (undamped) for a flat ``v``; 0 on the uncovered parameters."""
        parts = self.space.unflatten(v)
        out = [torch.zeros_like(p) for p in parts]
        for block in self.blocks:
            block.scatter(block.G @ block.matrix(parts) @ block.A, out)  # M → G M A
        return torch.cat([o.reshape(-1) for o in out])

    def inverse(self, damping: float) -> Callable[[Tensor], Tensor]:
        """``v`` (flat, in ``params`` order) ↦ approximately ``(K + damping I)⁻¹ v``.

        Factored Tikhonov damping (Martens & Grosse 2015, §6.3): each block is
        inverted as ``(A + π√λ I)⁻¹ ⊗ (G + √λ/π I)⁻¹`` with the trace-norm
        ``π`` of the module docstring; parameters no supported layer holds get
        ``1/damping``.

        Args:
            damping: ``λ > 0``.

        Returns:
            The linear map, for vectors of the factors' dtype and device.

        Raises:
            ValueError: If ``damping`` is not positive.
        """
        if not damping > 0:
            raise ValueError(f"K-FAC's damping must be positive, got {damping}")
        inverses = [_damped_inverses(block.A, block.G, damping) for block in self.blocks]

        def apply(v: Tensor) -> Tensor:
            parts = self.space.unflatten(v)
            out = [p / damping for p in parts]  # the identity part: uncovered parameters
            for block, (a_inv, g_inv) in zip(self.blocks, inverses, strict=True):
                block.scatter(g_inv @ block.matrix(parts) @ a_inv, out)
            return torch.cat([o.reshape(-1) for o in out])

        return apply


def coverage(model: nn.Module, params: Sequence[Tensor]) -> tuple[list[str], list[str]]:
    """The names of the ``params`` a supported layer holds, and of the others.

    What :meth:`KFAC.compute` will cover, known without a forward pass (a
    layer the forward pass never calls is then left uncovered too).
    """
    layers = _layers(model, params)
    held = {i for _, w, b in layers.values() for i in (w, b) if i is not None}
    return _names(model, params, held)


def unsupported_loss(loss_fn: Loss, *, float_targets: bool) -> str | None:
    """Why K-FAC cannot take ``loss_fn``, in one sentence; ``None`` when it can.

    The output gradients of every Fisher type (:mod:`hfft.optim.fisher`) are
    written for ``nn.MSELoss`` and for ``nn.CrossEntropyLoss`` on class indices
    (its output Hessian ``diag p − p pᵀ``); class weights, label smoothing or
    probability targets change that Hessian, and any other loss has none that
    K-FAC knows. It needs only the loss and the targets' dtype: a run is refused up front.

    Args:
        loss_fn: The batch loss.
        float_targets: Whether the targets are floating point (for cross-entropy:
            class probabilities rather than indices).
    """
    what: str | None = None
    if isinstance(loss_fn, nn.CrossEntropyLoss):
        if loss_fn.weight is not None:
            what = "cross-entropy with class weights"
        elif loss_fn.label_smoothing != 0:
            what = "cross-entropy with label smoothing"
        elif float_targets:
            what = "cross-entropy on class probabilities (soft targets)"
    elif not isinstance(loss_fn, nn.MSELoss):
        what = _loss_name(loss_fn)
    if what is None and getattr(loss_fn, "reduction", None) not in ("mean", "sum"):
        what = f"a loss with reduction={getattr(loss_fn, 'reduction', None)!r}"
    if what is None:
        return None
    return (
        "K-FAC supports nn.CrossEntropyLoss on class indices (no class weights or label "
        f"smoothing) and nn.MSELoss, with mean or sum reduction, not this run's {what}"
    )


def _loss_name(loss_fn: Loss) -> str:
    """``BCEWithLogitsLoss``, or ``function my_loss`` for a plain function (a user's name,
    clipped)."""
    if isinstance(loss_fn, nn.Module):
        return clipped(type(loss_fn).__name__, 40)
    name = getattr(loss_fn, "__qualname__", None)
    return clipped(f"function {name}" if isinstance(name, str) else type(loss_fn).__name__, 40)


def _names(
    model: nn.Module, params: Sequence[Tensor], held: set[int]
) -> tuple[list[str], list[str]]:
    names = {id(p): name for name, p in model.named_parameters()}
    covered = [names[id(p)] for i, p in enumerate(params) if i in held]
    return covered, [names[id(p)] for i, p in enumerate(params) if i not in held]


def _damped_inverses(A: Tensor, G: Tensor, damping: float) -> tuple[Tensor, Tensor]:
    """``(A + π√λ I)⁻¹`` and ``(G + √λ/π I)⁻¹`` by eigendecomposition (robust to A, G ≈ 0)."""
    tr_a, tr_g = float(A.trace()) / A.shape[0], float(G.trace()) / G.shape[0]
    # π balances the two factors' scales; a vanishing factor has no scale to balance
    pi = math.sqrt(tr_a / tr_g) if tr_a > 0 and tr_g > 0 else 1.0
    root = math.sqrt(damping)
    return _shifted_inverse(A, pi * root), _shifted_inverse(G, root / pi)


def _shifted_inverse(M: Tensor, shift: float) -> Tensor:
    # M is PSD up to rounding: clamp the eigenvalues so that M + shift I stays positive
    evals, evecs = torch.linalg.eigh(M)
    return (evecs / (evals.clamp(min=0) + shift)) @ evecs.T


def _check_arguments(
    model: nn.Module,
    loss_fn: Loss,
    targets: Tensor,
    params: Sequence[Tensor],
    fisher: str,
    chunk: int | None,
) -> None:
    if fisher not in FISHER_TYPES:
        raise ValueError(f"fisher must be one of {', '.join(FISHER_TYPES)}, got {fisher!r}")
    if chunk is not None and chunk < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk}")
    problem = unsupported_loss(loss_fn, float_targets=targets.is_floating_point())
    if problem is not None:
        raise ValueError(problem)
    mine = {id(p) for p in model.parameters()}
    if any(id(p) not in mine or not p.requires_grad for p in params):
        raise ValueError("K-FAC's params must be parameters of the model that require gradients")


def _supported(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        return (
            module.groups == 1
            and module.padding_mode == "zeros"
            and _int_padding(module) is not None
        )
    return False


def _int_padding(conv: nn.Conv1d | nn.Conv2d) -> tuple[int, ...] | None:
    """The convolution's padding per side as integers; ``None`` for an asymmetric "same"."""
    if conv.padding == "valid":
        return (0,) * len(conv.kernel_size)
    if conv.padding == "same":
        total = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size, strict=True)]
        return None if any(t % 2 for t in total) else tuple(t // 2 for t in total)
    return tuple(int(p) for p in conv.padding)


def _layers(
    model: nn.Module, params: Sequence[Tensor]
) -> dict[str, tuple[nn.Module, int | None, int | None]]:
    """The supported layers that hold some of ``params``, with the positions of their
    weight and bias there (``None`` for one that is not optimised)."""
    position = {id(p): i for i, p in enumerate(params)}
    layers: dict[str, tuple[nn.Module, int | None, int | None]] = {}
    taken: set[int] = set()
    for name, module in model.named_modules():
        if not isinstance(module, _LAYERS) or not _supported(module):
            continue
        w = position.get(id(module.weight))
        b = position.get(id(module.bias)) if module.bias is not None else None
        if (w is None and b is None) or {w, b} & taken:  # a tied parameter: its first layer
            continue
        layers[name] = (module, w, b)
        taken |= {i for i in (w, b) if i is not None}
    return layers


def _patches(module: nn.Module, x: Tensor) -> Tensor:
    """The layer's input as rows ``(N, O, d_in)``: one per example and output position."""
    if isinstance(module, nn.Linear):
        return x.reshape(x.shape[0], -1, x.shape[-1])
    assert isinstance(module, (nn.Conv1d, nn.Conv2d))
    padding = _int_padding(module)
    assert padding is not None
    k, s, d = module.kernel_size, module.stride, module.dilation
    if isinstance(module, nn.Conv1d):  # a Conv2d of height 1
        x, k, s, d, padding = x.unsqueeze(2), (1, *k), (1, *s), (1, *d), (0, *padding)
    cols = nn.functional.unfold(x, k, dilation=d, padding=padding, stride=s)
    return cols.transpose(1, 2)  # (N, C_in·k, O) → (N, O, C_in·k)


class _Accumulator:
    """Hooks that sum the factors of a batch's layers over its chunks.

    ``A`` is normalised by the whole batch's ``N`` (``total``) as it is
    summed; ``G`` by ``g_scale``, which the backward pass sets per chunk.
    """

    def __init__(self, layers: dict[str, tuple[nn.Module, int | None, int | None]], total: int):
        self.layers = layers
        self.total = total
        self.A: dict[str, Tensor] = {}
        self.G: dict[str, Tensor] = {}
        self.g_scale = 1.0
        self.chunks = 0  # chunks done
        self.calls: dict[str, int] = dict.fromkeys(layers, 0)

    def block(self, name: str) -> _Block:
        """The layer's factors; a layer called k times per forward pass has k times the
        positions (A was summed k times)."""
        _, w, b = self.layers[name]
        return _Block(w, b, self.A[name] / (self.calls[name] / self.chunks), self.G[name])

    def hook(self, name: str, module: nn.Module) -> list[Any]:
        def on_input(mod: nn.Module, args: tuple[Tensor, ...]) -> None:
            if args:  # an input passed by keyword is not seen: the layer stays uncovered
                self.calls[name] += 1
                self._add_input(name, mod, args[0].detach())

        def on_output(mod: nn.Module, args: tuple[Tensor, ...], out: Tensor) -> None:
            if out.requires_grad:  # a tensor hook fires with the gradient of this very value,
                # even when an in-place activation overwrites it afterwards
                out.register_hook(lambda g: self._add_grad(name, mod, g))

        return [module.register_forward_pre_hook(on_input), module.register_forward_hook(on_output)]

    @torch.no_grad()
    def _add_input(self, name: str, module: nn.Module, x: Tensor) -> None:
        _, w, b = self.layers[name]
        rows = _patches(module, x) if w is not None else x.new_empty(x.shape[0], 1, 0)
        positions = rows.shape[1]
        rows = rows.reshape(-1, rows.shape[-1])
        if b is not None:  # the bias is the weight of a constant input 1
            rows = torch.cat([rows, rows.new_ones(rows.shape[0], 1)], dim=1)
        self._add(self.A, name, rows.T @ rows / (self.total * positions))

    @torch.no_grad()
    def _add_grad(self, name: str, module: nn.Module, g: Tensor) -> None:
        if not isinstance(module, nn.Linear):  # channels of a convolution's output are dim 1
            g = g.movedim(1, -1)
        rows = g.reshape(-1, g.shape[-1])
        self._add(self.G, name, rows.T @ rows * self.g_scale)

    @staticmethod
    def _add(store: dict[str, Tensor], name: str, value: Tensor) -> None:
        if name in store:
            store[name].add_(value)
        else:
            store[name] = value


def _backpropagate(
    model: nn.Module,
    loss_fn: Loss,
    x: Batchable,
    y: Tensor,
    params: Sequence[Tensor],
    fisher: str,
    norm: float,
    generator: torch.Generator | None,
    acc: _Accumulator,
) -> None:
    """One chunk: the forward pass (the hooks take ``A``), then one backward pass per
    output gradient the Fisher type asks for (the hooks take ``G``)."""
    with torch.enable_grad():
        z = model(x)
        grads, acc.g_scale = output_gradients(loss_fn, z.detach(), y, fisher, norm, generator)
        for i, g in enumerate(grads):
            last = i == len(grads) - 1
            torch.autograd.grad(z, params, g, retain_graph=not last, allow_unused=True)
