"""Curvature of a mini-batch loss as a linear operator on flat parameter vectors.

:func:`linearize_curvature` evaluates, at the current parameters θ and on a
batch B, the loss ``L_B(θ)``, its gradient ``g`` and an operator ``v ↦ C v``
where ``C`` is either

* the generalised Gauss-Newton matrix ``G = Jᵀ H J`` (``J`` the Jacobian of the
  network outputs w.r.t. θ, ``H`` the Hessian of the loss w.r.t. the outputs),
  or
* the Hessian ``∇²L_B(θ)``.

Two back-ends compute the products:

* ``"func"`` (default): the forward pass and its linearisation are computed
  once per step and reused by every product. A GGN product is then one
  tangent pass ``v → J v``, the closed-form ``J v → H J v`` and one backward pass
  ``H J v → Jᵀ H J v``; a Hessian product is one backward pass through the
  retained double-backward graph of the gradient.
* ``"backpack"``: BackPACK's R-op products (``backpack.hessianfree``), which
  redo the double-backward R-op for every product, as the paper's reference
  implementation does; kept for comparison.

With ``chunk_size`` the batch is processed in chunks and everything is summed
exactly: a chunk's loss is weighted by its share of the loss's own normaliser
(``n_c / N`` for a loss averaged over samples; the share of the non-ignored or
weighted targets for cross-entropy with ``ignore_index`` or class weights) and
by 1 for sum-reduced ones, so loss, gradient and products equal the
full-batch quantities. Inputs may be a tensor or a dict or tuple of batched
tensors (:mod:`hfft.optim.batches`). By default a chunked product recomputes
each chunk's forward pass (memory of one chunk); ``cache_chunks=True`` keeps
every chunk's linearisation (memory of the whole batch, no recomputation).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from hfft.optim.batches import Batchable, batch_size, signature, take
from hfft.optim.flat import FlatSpace, ModelState
from hfft.optim.output_hessians import (
    Loss,
    hessian_kind,
    loss_normaliser,
    loss_reduction,
    output_hessian,
)
from hfft.optim.step_context import step_mode, synced_time
from hfft.optim.trace import TracedLinearization

__all__ = [
    "BACKENDS",
    "CURVATURES",
    "CurvatureOperator",
    "LinearizationCache",
    "batch_gradient",
    "batch_loss",
    "linearize_curvature",
    "split_batch",
]

CURVATURES = ("ggn", "hessian")
BACKENDS = ("func", "backpack")


@dataclass(frozen=True)
class Chunk:
    """A piece of a batch and its weight in the batch loss."""

    inputs: Batchable
    targets: Tensor
    weight: float


def split_batch(
    inputs: Batchable,
    targets: Tensor,
    chunk_size: int | None,
    loss_fn: Loss,
    total: float | None = None,
) -> list[Chunk]:
    """Split a batch into chunks whose weighted losses sum to the batch loss.

    A chunk's weight is its share of the loss's own normaliser
    (:func:`hfft.optim.output_hessians.loss_normaliser`): ``n_c / N`` for a
    loss averaged over samples, the share of the non-ignored (or weighted)
    targets for cross-entropy with ``ignore_index`` or class weights, 1 for a
    sum-reduced loss. So loss, gradient and curvature are exact in any chunking;
    a chunk whose targets are all ignored is left out (it adds nothing).

    Args:
        inputs: Batch inputs (a tensor or a nest of them), samples along dimension 0.
        targets: Batch targets, samples along the first dimension.
        chunk_size: Samples per chunk; ``None`` for one chunk.
        loss_fn: The loss.
        total: The normaliser of the whole batch when this batch is one
            rank's shard of it (data-parallel); this batch's by default.

    Raises:
        ValueError: For a non-positive chunk size or mismatched batch sizes.
    """
    n = batch_size(inputs)
    if targets.shape[0] != n:
        raise ValueError(f"inputs hold {n} samples but targets hold {targets.shape[0]}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size}")
    size = n if chunk_size is None or chunk_size >= n else chunk_size
    pieces = [(take(inputs, slice(a, a + size)), targets[a : a + size]) for a in range(0, n, size)]
    if loss_reduction(loss_fn) == "sum":
        return [Chunk(x, y, 1.0) for x, y in pieces]
    whole = total if total is not None else loss_normaliser(loss_fn, targets)
    chunks = [Chunk(x, y, loss_normaliser(loss_fn, y) / whole) for x, y in pieces]
    # a chunk whose every target is ignored adds nothing (and its own mean is 0/0)
    return [c for c in chunks if c.weight > 0] or chunks[:1]


@torch.no_grad()
def batch_loss(model: nn.Module, loss_fn: Loss, chunks: Sequence[Chunk]) -> float:
    """The batch loss at the model's current parameters, summed over chunks."""
    total = 0.0
    for c in chunks:
        total += c.weight * float(loss_fn(model(c.inputs), c.targets))
    return total


def batch_gradient(
    model: nn.Module,
    loss_fn: Loss,
    chunks: Sequence[Chunk],
    params: Sequence[Tensor],
    reduce: Callable[[Tensor], Tensor] | None = None,
) -> tuple[float, Tensor]:
    """The batch loss and its flat gradient, one backward pass per chunk.

    What a :class:`CurvatureOperator` computes as it linearises, without the
    linearisation: the gradient of a batch whose curvature is taken on a part of it
    (sub-sampled curvature). ``reduce`` sums both over ranks (data-parallel).
    """
    loss = 0.0
    grad = [torch.zeros_like(p) for p in params]
    for c in chunks:
        value = loss_fn(model(c.inputs), c.targets)
        parts = torch.autograd.grad(value, list(params), allow_unused=True)
        loss += c.weight * float(value.detach())
        for acc, g in zip(grad, parts, strict=True):
            if g is not None:
                acc.add_(g, alpha=c.weight)
    flat = torch.cat([g.reshape(-1) for g in grad])
    if reduce is not None:
        both = reduce(torch.cat([flat, flat.new_tensor([loss])]))
        flat, loss = both[:-1], float(both[-1])
    return loss, flat


class LinearizationCache:
    """Traced linearisations of one model, keyed by input shape and mode.

    Tracing costs about one gradient and is done once per input shape; a
    model that cannot be traced (or whose trace does not reproduce its forward
    pass) falls back to ``torch.func.jvp`` for every product, recorded in
    :attr:`fallback_reason`; one whose kernels lack a forward-mode derivative
    goes reverse-over-reverse (:attr:`no_forward_ad`). ``reverse_only`` takes
    that path from the start (``hfft bench`` measures what it costs).
    """

    def __init__(self, reverse_only: bool = False) -> None:
        self._cache: dict[tuple[Any, ...], Any] = {}
        self.reverse_only = reverse_only
        self.fallback_reason: str | None = "asked for" if reverse_only else None
        # set when a kernel lacks a forward-mode derivative: products go reverse-over-reverse
        self.no_forward_ad: str | None = "asked for" if reverse_only else None

    def get(
        self, model: nn.Module, state: ModelState, params: Sequence[Tensor], x: Batchable
    ) -> Any:
        if self.reverse_only:
            return None
        key = (
            id(model),
            model.training,
            signature(x),
            tuple(state.param_names),
            tuple(tuple(p.shape) for p in params),
        )
        if key not in self._cache:
            try:
                self._cache[key] = TracedLinearization.build(
                    model, state.param_names, state.other_names, params, state.others, x
                )
            except Exception as err:  # any tracing failure: use the untraced path
                self.fallback_reason = f"{type(err).__name__}: {err}"
                self._cache[key] = None
        return self._cache[key]

    def trace(
        self,
        model: nn.Module,
        params: Sequence[Tensor],
        inputs: Batchable,
        sizes: Iterable[int],
        chunk_size: int | None,
    ) -> None:
        """Trace now, in the model's current mode, every chunk shape that batches of each of
        ``sizes`` samples split into ``chunk_size`` chunks give (:func:`split_batch`),
        from the first samples of ``inputs``; each shape once.

        Tracing is a one-time cost like a compilation: done before the clock starts (the
        ``kfac`` runner), it stays out of timed steps.
        """
        state = ModelState(model, params)
        shapes: set[int] = set()
        for n in sizes:
            size = chunk_size or n
            shapes |= {min(size, n), n % size} - {0}  # the full chunks and the remainder
        for k in sorted(shapes):
            self.get(model, state, [p.detach() for p in params], take(inputs, slice(0, k)))


class CurvatureOperator:
    """Loss, gradient and curvature products of a batch at fixed parameters.

    Create with :func:`linearize_curvature`. ``matvec`` maps a flat vector to
    the flat curvature-vector product; it is deterministic for a
    deterministic model.

    Attributes:
        loss: Batch loss ``L_B(θ)`` (without any L2 term).
        grad: Flat gradient ``∇L_B(θ)``.
        num_products: Products computed so far.
        product_seconds: Wall-clock seconds spent in :meth:`matvec`. On a GPU
            this counts only queued work unless :attr:`synchronize` is set.
        synchronize: Synchronise the device around each product so that
            :attr:`product_seconds` is exact on a GPU (for profiling; it adds
            one synchronisation per product).
    """

    loss: float
    grad: Tensor

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Loss,
        chunks: list[Chunk],
        params: Sequence[Tensor],
        cache_chunks: bool,
        reduce: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        self.model = model
        self.reduce = reduce
        self.loss_fn = loss_fn
        self.chunks = chunks
        # a private copy: the optimizer writes trial parameters into the model while
        # this operator's graphs still need the values they were built at
        self.params = [p.detach().clone() for p in params]
        self.space = FlatSpace(params)
        self.state = ModelState(model, params)
        self.keep = cache_chunks or len(chunks) == 1
        self.num_products = 0
        self.product_seconds = 0.0
        self.synchronize = False
        self._cuda = self.params[0].device.type == "cuda"
        self._prepared: list[Any] = []
        # re-linearised chunks: the last one of a product stays linearised for the
        # next, which visits the chunks in the opposite order (one forward fewer)
        self._held: tuple[int, Any] | None = None
        self._reverse = False
        loss = 0.0
        grad = [torch.zeros_like(p) for p in self.params]
        with step_mode(model, "keep"):  # running statistics stay, forward-mode kernels
            for i, c in enumerate(chunks):
                prep, loss_c, grad_c = self._prepare(c)
                loss += c.weight * float(loss_c)
                for acc, g in zip(grad, grad_c, strict=True):
                    acc.add_(g, alpha=c.weight)
                if self.keep:
                    self._prepared.append(prep)
                elif i == len(chunks) - 1:  # the first product starts with it, backwards
                    self._held, self._reverse = (i, prep), True
                del prep, grad_c
        flat = self.space.flatten(grad)
        if reduce is not None:  # data-parallel: sum the shards' loss and gradient
            both = reduce(torch.cat([flat, flat.new_tensor([loss])]))
            flat, loss = both[:-1], float(both[-1])
        self.loss = loss
        self.grad = flat

    def _leaves(self) -> list[Tensor]:
        return [p.detach().requires_grad_(True) for p in self.params]

    def _prepare(self, chunk: Chunk, gradient: bool = True) -> tuple[Any, Tensor, list[Tensor]]:
        """Linearise ``chunk``; returns (what products need, loss, gradient).

        With ``gradient=False`` (re-linearising a chunk for a product) the
        gradient may be skipped and an empty list returned.
        """
        raise NotImplementedError

    def _product(self, prep: Any, chunk: Chunk, vs: list[Tensor], retain: bool) -> Sequence[Tensor]:
        raise NotImplementedError

    def matvec(self, v: Tensor) -> Tensor:
        """``v ↦ C v`` for a flat vector ``v``."""
        sync = self.synchronize and self._cuda
        start = synced_time(sync)
        vs = self.space.unflatten(v)
        with step_mode(self.model, "keep"):
            out = self._sum(0, len(self.chunks), vs)
        if not self.keep:
            self._reverse = not self._reverse
        if self.reduce is not None:
            out = self.reduce(out)
        self.num_products += 1
        self.product_seconds += synced_time(sync) - start
        return out

    __call__ = matvec

    def release(self) -> None:
        """Drop the chunk kept linearised for the next product (e.g. when CG is done).

        Products remain possible; the next one re-linearises every chunk.
        """
        self._held = None

    def _sum(self, lo: int, hi: int, vs: list[Tensor]) -> Tensor:
        """Weighted sum of the products of chunks ``lo … hi-1``, as a binary tree.

        The two halves are added as ``first + second`` in the order they are
        visited; addition commutes exactly, so both visiting orders give the
        same bits and every product is the same linear map.
        """
        if hi - lo == 1:
            return self._chunk_product(lo, vs)
        mid = (lo + hi) // 2
        halves = [(lo, mid), (mid, hi)]
        if self._reverse:
            halves.reverse()
        first = self._sum(*halves[0], vs)
        return first.add_(self._sum(*halves[1], vs))

    def _chunk_product(self, i: int, vs: list[Tensor]) -> Tensor:
        chunk = self.chunks[i]
        if self.keep:
            prep = self._prepared[i]
        elif self._held is not None and self._held[0] == i:
            prep, self._held = self._held[1], None
        else:
            prep = self._prepare(chunk, gradient=False)[0]
        last = not self.keep and i == (0 if self._reverse else len(self.chunks) - 1)
        cv = self.space.flatten(self._product(prep, chunk, vs, retain=self.keep or last))
        if last:
            self._held = (i, prep)
        del prep  # before the next chunk is linearised: one chunk's values at a time
        return cv.mul_(chunk.weight)


class _FuncGGN(CurvatureOperator):
    def __init__(self, *args: Any, lin_cache: LinearizationCache, **kwargs: Any) -> None:
        self.lin_cache = lin_cache
        # output-Hessian formula per chunk, decided once (it may read the targets)
        self._kinds: dict[int, str] = {}
        super().__init__(*args, **kwargs)

    def _prepare(self, chunk: Chunk, gradient: bool = True) -> tuple[Any, Tensor, list[Tensor]]:
        lin = self.lin_cache.get(self.model, self.state, self.params, chunk.inputs)
        leaves = self._leaves()
        with torch.enable_grad():
            if lin is not None:
                z, saved = lin.forward(leaves, self.state.others, chunk.inputs)
            else:
                z = torch.func.functional_call(
                    self.model, self.state.state(leaves), (chunk.inputs,)
                )
                saved = []
            loss = self.loss_fn(z, chunk.targets)
            grads = torch.autograd.grad(loss, leaves, retain_graph=True) if gradient else ()
        key = id(chunk)
        if key not in self._kinds:
            self._kinds[key] = hessian_kind(self.loss_fn, z, chunk.targets)
        hvp = output_hessian(self.loss_fn, z, chunk.targets, self._kinds[key])
        return (lin, leaves, z, saved, hvp), loss.detach(), list(grads)

    def _jvp(self, prep: Any, x: Batchable, vs: list[Tensor]) -> Tensor:
        """``J v``: the traced tangent pass, ``torch.func.jvp``, or reverse-over-reverse."""
        lin, leaves, z, saved, _ = prep
        if lin is not None:
            return lin.jvp(saved, vs)
        if not self.lin_cache.no_forward_ad:

            def f(*p: Tensor) -> Tensor:
                return torch.func.functional_call(self.model, self.state.state(p), (x,))

            try:
                with torch.no_grad():
                    return torch.func.jvp(f, tuple(self.params), tuple(vs))[1]
            except NotImplementedError as err:  # a kernel without a forward-mode derivative
                self.lin_cache.no_forward_ad = str(err).splitlines()[0]
        return _jvp_by_double_vjp(z, leaves, vs)

    def _product(self, prep: Any, chunk: Chunk, vs: list[Tensor], retain: bool) -> Sequence[Tensor]:
        _, leaves, z, _, hvp = prep
        jv = self._jvp(prep, chunk.inputs, vs)  # v → J v
        hjv = hvp(jv)  # J v → H J v
        return torch.autograd.grad(z, leaves, hjv, retain_graph=retain)  # → Jᵀ H J v


def _jvp_by_double_vjp(z: Tensor, leaves: list[Tensor], vs: list[Tensor]) -> Tensor:
    """``J v`` by reverse-over-reverse, for a network whose kernels lack forward mode.

    ``g(u) = Jᵀ u`` is linear in ``u``, so ``∂(gᵀ v)/∂u = J v``: one backward
    pass that builds a graph and one through it, on the retained forward graph.
    """
    u = torch.zeros_like(z, requires_grad=True)
    with torch.enable_grad():
        jt_u = torch.autograd.grad(z, leaves, u, create_graph=True, retain_graph=True)
        return torch.autograd.grad(jt_u, u, vs, retain_graph=True)[0]


class _FuncHessian(CurvatureOperator):
    def _prepare(self, chunk: Chunk, gradient: bool = True) -> tuple[Any, Tensor, list[Tensor]]:
        leaves = self._leaves()
        with torch.enable_grad():
            z = torch.func.functional_call(self.model, self.state.state(leaves), (chunk.inputs,))
            loss = self.loss_fn(z, chunk.targets)
            grads = torch.autograd.grad(loss, leaves, create_graph=True)
        return (leaves, grads), loss.detach(), [g.detach() for g in grads]

    def _product(self, prep: Any, chunk: Chunk, vs: list[Tensor], retain: bool) -> Sequence[Tensor]:
        leaves, grads = prep
        # v → ∇(gᵀv): reverse-over-reverse through the retained gradient graph
        return torch.autograd.grad(grads, leaves, vs, retain_graph=retain)


class _BackpackCurvature(CurvatureOperator):
    def __init__(self, *args: Any, curvature: str, **kwargs: Any) -> None:
        self.curvature = curvature
        super().__init__(*args, **kwargs)

    def _prepare(self, chunk: Chunk, gradient: bool = True) -> tuple[Any, Tensor, list[Tensor]]:
        leaves = self._leaves()
        with torch.enable_grad():
            z = torch.func.functional_call(self.model, self.state.state(leaves), (chunk.inputs,))
            loss = self.loss_fn(z, chunk.targets)
            grads = torch.autograd.grad(loss, leaves, create_graph=True) if gradient else ()
        return (leaves, z, loss), loss.detach(), [g.detach() for g in grads]

    def _product(self, prep: Any, chunk: Chunk, vs: list[Tensor], retain: bool) -> Sequence[Tensor]:
        from backpack.hessianfree.ggnvp import ggn_vector_product_from_plist
        from backpack.hessianfree.hvp import hessian_vector_product

        leaves, z, loss = prep
        with torch.enable_grad():
            if self.curvature == "ggn":
                out = ggn_vector_product_from_plist(loss, z, leaves, vs)
            else:
                out = hessian_vector_product(loss, leaves, vs)
        return [o.detach() for o in out]


def linearize_curvature(
    model: nn.Module,
    loss_fn: Loss,
    inputs: Tensor,
    targets: Tensor,
    params: Sequence[Tensor] | None = None,
    *,
    curvature: str = "ggn",
    backend: str = "func",
    chunk_size: int | None = None,
    cache_chunks: bool = False,
    lin_cache: LinearizationCache | None = None,
    total: float | None = None,
    reduce: Callable[[Tensor], Tensor] | None = None,
) -> CurvatureOperator:
    """Loss, gradient and curvature operator of ``loss_fn(model(inputs), targets)``.

    The model is used in the mode it is in (``train()``/``eval()``); for
    products that define one quadratic model it must be a deterministic
    function of its parameters and inputs.

    Args:
        model: The network; its parameters are read, never changed.
        loss_fn: ``loss_fn(outputs, targets)``, mean- or sum-reduced.
        inputs: Batch inputs.
        targets: Batch targets.
        params: The parameters to differentiate (default: all of the model's
            parameters that require gradients).
        curvature: ``"ggn"`` or ``"hessian"``.
        backend: ``"func"`` or ``"backpack"``.
        chunk_size: Process the batch in chunks of this many samples.
        cache_chunks: Keep every chunk's linearisation instead of recomputing
            it per product.
        lin_cache: Traced linearisations to reuse across calls (``"func"`` GGN).
        total: Data-parallel: the loss normaliser of the whole batch, of
            which ``inputs`` is this rank's shard.
        reduce: Data-parallel: sums a tensor over ranks (in place); applied
            to the loss and gradient and to every product.

    Returns:
        The :class:`CurvatureOperator`.

    Raises:
        ValueError: For an unknown curvature or back-end.
    """
    if curvature not in CURVATURES:
        raise ValueError(f"curvature must be one of {CURVATURES}, got {curvature!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if params is None:
        params = [p for p in model.parameters() if p.requires_grad]
    chunks = split_batch(inputs, targets, chunk_size, loss_fn, total)
    args = (model, loss_fn, chunks, params)
    common: dict[str, Any] = {"cache_chunks": cache_chunks, "reduce": reduce}
    if backend == "backpack":
        return _BackpackCurvature(*args, **common, curvature=curvature)
    if curvature == "hessian":
        return _FuncHessian(*args, **common)
    cache = lin_cache if lin_cache is not None else LinearizationCache()
    return _FuncGGN(*args, **common, lin_cache=cache)
