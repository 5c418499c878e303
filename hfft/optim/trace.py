"""A reusable linearisation of a network: trace ``jvp`` once, split it in two.

``torch.func.linearize`` re-traces the model at every call, which costs about
one gradient per HF step. Here the forward-mode derivative of the network is
traced once per input shape into an FX graph of aten operations and split
into

* a *primal* graph ``(params, buffers, x) ↦ (z, saved…)``: the forward pass,
  also returning the intermediate values that the tangent computation needs;
* a *tangent* graph ``(saved…, v) ↦ J v``: only the operations that touch the
  tangent ``v``.

Per HF step the primal graph runs once, under autograd, which gives the
outputs, the gradient and the reverse-mode ``Jᵀ u`` from one forward pass;
every CG product then runs only the tangent graph and one backward pass.

The trace is made with functionalisation (no in-place updates, so values
saved for the tangent graph cannot be overwritten later in the primal graph)
and is only valid for models whose forward pass does not branch on data
values; :meth:`TracedLinearization.build` checks the traced forward against
the model's own forward once per input shape.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, fx, nn
from torch.func import functional_call, functionalize, jvp
from torch.fx.experimental.proxy_tensor import make_fx

__all__ = ["TracedLinearization"]


class TracedLinearization:
    """Primal and tangent graphs of one model at one input shape.

    Args:
        primal: ``(*params, *others, x) ↦ (z, *saved)``.
        tangent: ``(*saved, *v) ↦ J v``.
        num_saved: Number of saved intermediate values.
    """

    def __init__(self, primal: fx.GraphModule, tangent: fx.GraphModule, num_saved: int) -> None:
        self.primal = primal
        self.tangent = tangent
        self.num_saved = num_saved

    @classmethod
    def build(
        cls,
        model: nn.Module,
        param_names: Sequence[str],
        other_names: Sequence[str],
        params: Sequence[Tensor],
        others: Sequence[Tensor],
        x: Tensor,
        atol: float = 1e-4,
    ) -> TracedLinearization:
        """Trace ``v ↦ J v`` of ``model`` w.r.t. ``params`` at inputs shaped like ``x``.

        Args:
            model: The network, in the mode it will be used in.
            param_names: Names of the differentiated parameters.
            other_names: Names of all other parameters and buffers (inputs of
                the graphs, held constant).
            params: Values of the differentiated parameters.
            others: Values of the other tensors.
            x: An input batch (its values are used for tracing and checking).
            atol: Tolerance of the check against the model's own forward.

        Raises:
            RuntimeError: If the traced forward pass disagrees with the
                model's (data-dependent control flow) or tracing fails.
        """
        state = _State(model, param_names, other_names)
        gm = _trace_jvp(state, params, others, x)
        n_p, n_o = len(params), len(others)
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        if len(placeholders) != 2 * n_p + n_o + 1:
            raise RuntimeError("unexpected number of inputs in the traced graph")
        out_node = next(n for n in gm.graph.nodes if n.op == "output")
        z_node, jv_node = out_node.args[0]
        _drop_zero_terms(gm.graph)
        tdep = _tangent_dependent(gm.graph, placeholders[n_p + n_o + 1 :])
        if jv_node not in tdep:
            raise RuntimeError("the outputs do not depend on the parameters")
        tangent_graph, needed = _tangent_graph(gm.graph, tdep, jv_node)
        primal_graph = _primal_graph(gm.graph, tdep, z_node, needed)
        if x.device.type == "cpu":
            _channels_last_max_pool(primal_graph)
        lin = cls(fx.GraphModule(gm, primal_graph), fx.GraphModule(gm, tangent_graph), len(needed))
        with torch.no_grad():
            z_traced = lin.primal(*params, *others, x)[0]
            z_model = state.forward(params, others, x)
        if z_traced.shape != z_model.shape or not torch.allclose(
            z_traced, z_model, atol=atol, rtol=1e-4
        ):
            raise RuntimeError("the traced forward pass differs from the model's own forward pass")
        return lin

    def forward(
        self, params: Sequence[Tensor], others: Sequence[Tensor], x: Tensor
    ) -> tuple[Tensor, list[Tensor]]:
        """Run the primal graph; returns the outputs and the saved values.

        Runs under the caller's autograd mode, so with parameters that require
        gradients the outputs carry a graph for ``Jᵀ u``.
        """
        res = self.primal(*params, *others, x)
        return res[0], [s.detach() for s in res[1:]]

    def jvp(self, saved: Sequence[Tensor], v: Sequence[Tensor]) -> Tensor:
        """``J v`` from the saved values of :meth:`forward`."""
        with torch.no_grad():
            return self.tangent(*saved, *v)


_ZERO_PRESERVING = {
    torch.ops.aten.alias.default,
    torch.ops.aten.expand.default,
    torch.ops.aten.view.default,
    torch.ops.aten._unsafe_view.default,
    torch.ops.aten.reshape.default,
    torch.ops.aten.t.default,
    torch.ops.aten.permute.default,
    torch.ops.aten.clone.default,
    torch.ops.aten.constant_pad_nd.default,
    torch.ops.aten.threshold_backward.default,
}
_ZERO_IF_FIRST = {torch.ops.aten.mul.Tensor, torch.ops.aten.mm.default, torch.ops.aten.bmm.default}


class _State:
    """The model as a function of its parameters and other tensors, by name."""

    def __init__(
        self, model: nn.Module, param_names: Sequence[str], other_names: Sequence[str]
    ) -> None:
        self.model, self.param_names, self.other_names = model, param_names, other_names

    def forward(self, params: Sequence[Tensor], others: Sequence[Tensor], x: Tensor) -> Tensor:
        state = dict(zip(self.param_names, params, strict=True))
        state.update(zip(self.other_names, others, strict=True))
        return functional_call(self.model, state, (x,))


def _trace_jvp(
    state: _State, params: Sequence[Tensor], others: Sequence[Tensor], x: Tensor
) -> fx.GraphModule:
    """``(params, others, x, v) ↦ (z, J v)`` as one functionalised graph of aten operations."""

    def jvp_of_model(p: list[Tensor], o: list[Tensor], inp: Tensor, v: list[Tensor]):
        return jvp(lambda p_: state.forward(p_, o, inp), (tuple(p),), (tuple(v),))

    tangents = [torch.zeros_like(p) for p in params]
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        return make_fx(functionalize(jvp_of_model, remove="mutations"))(
            list(params), list(others), x, tangents
        )


def _tangent_dependent(graph: fx.Graph, tangent_inputs: Sequence[fx.Node]) -> set[fx.Node]:
    """The nodes that depend on the tangent (in graph order, so one pass suffices)."""
    dependent: set[fx.Node] = set(tangent_inputs)
    for node in graph.nodes:
        if node.op == "call_function" and any(a in dependent for a in node.all_input_nodes):
            dependent.add(node)
    return dependent


def _tangent_graph(
    graph: fx.Graph, tdep: set[fx.Node], jv_node: fx.Node
) -> tuple[fx.Graph, list[fx.Node]]:
    """``(saved…, v) ↦ J v``, and the primal nodes it reads (the values to save)."""
    needed: list[fx.Node] = []
    for node in graph.nodes:
        if node in tdep:
            needed += [a for a in node.all_input_nodes if a not in tdep and a not in needed]
    tangent = fx.Graph()
    env: dict[fx.Node, fx.Node] = {
        n: tangent.placeholder(f"saved_{i}") for i, n in enumerate(needed)
    }
    for node in graph.nodes:
        if node in tdep:
            env[node] = tangent.node_copy(node, lambda n: env[n])
    tangent.output(env[jv_node])
    tangent.eliminate_dead_code()
    # saved values whose only uses were dead are neither saved nor passed
    unused = {i for i, n in enumerate(needed) if not env[n].users}
    for i in sorted(unused, reverse=True):
        tangent.erase_node(env[needed[i]])
    needed = [n for i, n in enumerate(needed) if i not in unused]
    for i, n in enumerate(needed):
        env[n].target = env[n].name = f"saved_{i}"
    return tangent, needed


def _primal_graph(
    graph: fx.Graph, tdep: set[fx.Node], z_node: fx.Node, needed: list[fx.Node]
) -> fx.Graph:
    """``(params, others, x) ↦ (z, saved…)``: the forward pass without the tangent."""
    primal = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in graph.nodes:
        if node in tdep or node.op == "output":
            continue
        env[node] = primal.node_copy(node, lambda n: env[n])
    primal.output((env[z_node], *(env[n] for n in needed)))
    primal.eliminate_dead_code()
    return primal


def _drop_zero_terms(graph: fx.Graph) -> None:
    """Remove the terms that the zero tangent of the input contributes.

    The input has no tangent, which the trace records as a tensor of zeros;
    the derivative of the first layer then adds, e.g., ``conv(0, W)`` to its
    result: a whole wasted convolution per forward pass. Nodes that are
    provably all zeros are tracked, and ``a + zero`` becomes ``a`` (expanded
    to the sum's shape where ``a`` broadcasts); dead code elimination then
    removes the zero terms.
    """
    zero: set[fx.Node] = set()
    for node in list(graph.nodes):
        if node.op != "call_function":
            continue
        if _is_zero(node, zero):
            zero.add(node)
        elif node.target is torch.ops.aten.add.Tensor and len(node.args) == 2 and not node.kwargs:
            _drop_zero_operand(graph, node, zero)
    graph.eliminate_dead_code()


def _is_zero(node: fx.Node, zero: set[fx.Node]) -> bool:
    """Whether ``node`` is all zeros, given the nodes already known to be."""
    args = [a for a in node.args if isinstance(a, fx.Node)]
    target = node.target
    if target in (torch.ops.aten.zeros.default, torch.ops.aten.zeros_like.default):
        return True
    if target in _ZERO_PRESERVING and args and args[0] in zero:
        return target is not torch.ops.aten.constant_pad_nd.default or not node.args[2:]
    if target in _ZERO_IF_FIRST and any(a in zero for a in args):
        return True
    return bool(
        target is torch.ops.aten.convolution.default
        and node.args[0] in zero
        and node.args[2] is None
    )


def _drop_zero_operand(graph: fx.Graph, node: fx.Node, zero: set[fx.Node]) -> None:
    """``a + zero`` (or ``zero + a``) becomes ``a``, expanded where ``a`` broadcasts."""
    a, b = node.args
    for keep, drop in ((a, b), (b, a)):
        if drop not in zero or not isinstance(keep, fx.Node):
            continue
        shape = _shape(node)
        if shape is None or _shape(keep) is None:
            return
        if _shape(keep) != shape:  # a broadcast operand: expand it (a view)
            with graph.inserting_before(node):
                keep = graph.call_function(torch.ops.aten.expand.default, (keep, list(shape)))
                keep.meta["val"] = node.meta["val"]
        node.replace_all_uses_with(keep)
        return


class _ChannelsLastMaxPool(torch.autograd.Function):
    """``max_pool2d_with_indices`` computed in channels-last layout.

    Same values and indices as the contiguous kernel (the first maximum of
    each window wins in both layouts), returned contiguous; on CPUs about
    three times faster than the contiguous kernel even with both layout
    conversions. The backward pass is the contiguous one, as without it.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, *args: Any) -> tuple[Tensor, Tensor]:
        out, idx = torch.ops.aten.max_pool2d_with_indices.default(
            x.contiguous(memory_format=torch.channels_last), *args
        )
        out, idx = out.contiguous(), idx.contiguous()
        ctx.save_for_backward(x, idx)
        ctx.args = args
        ctx.mark_non_differentiable(idx)
        return out, idx

    @staticmethod
    def backward(ctx: Any, grad: Tensor, _: Tensor) -> tuple[Tensor | None, ...]:
        x, idx = ctx.saved_tensors
        k, s, p, d, c = list(ctx.args) + [None, [], [0, 0], [1, 1], False][len(ctx.args) :]
        grad_x = torch.ops.aten.max_pool2d_with_indices_backward.default(
            grad, x, k, s or k, p, d, c, idx
        )
        return (grad_x, *([None] * len(ctx.args)))


def _max_pool_2d_channels_last(x: Tensor, *args: Any) -> tuple[Tensor, Tensor]:
    return _ChannelsLastMaxPool.apply(x, *args)


def _channels_last_max_pool(graph: fx.Graph) -> None:
    """Route the batched 2-d max-pools of ``graph`` through channels-last.

    PyTorch's CPU max-pool kernel for contiguous (NCHW) tensors is not
    vectorised; on 3c3d it takes a quarter of a gradient's time. The graph's
    primal pass runs it on every HF setup and on every chunk's
    re-linearisation, so this is where it pays.
    """
    for node in graph.nodes:
        if node.target is torch.ops.aten.max_pool2d_with_indices.default:
            shape = _shape(node.args[0]) if isinstance(node.args[0], fx.Node) else None
            if shape is not None and len(shape) == 4:
                node.target = _max_pool_2d_channels_last


def _shape(node: fx.Node) -> torch.Size | None:
    val = node.meta.get("val")
    return val.shape if isinstance(val, Tensor) else None
