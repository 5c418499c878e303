"""Plumbing of one HF step: the model's mode during the step, and its wall clock."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import torch
from torch import nn

__all__ = ["Timer", "forward_ad_kernels", "fp32_precision", "step_mode", "synced_time"]


@contextlib.contextmanager
def fp32_precision(tf32: bool) -> Iterator[None]:
    """Full float32 (``tf32=False``) or TF32 CUDA convolutions and matrix products.

    PyTorch lets cuDNN convolutions use TF32 by default on Ampere and later
    GPUs, which rounds their inputs to a 10-bit mantissa (relative error about
    1e-3). CG needs every curvature product to be the same symmetric linear
    map to near float32 precision: errors of 1e-3 per product break the
    conjugacy of its directions and blur ρ, whose numerator and denominator
    are small differences. So the HF step runs in IEEE float32 unless asked
    otherwise; the flags are restored after. No effect on CPUs.
    """
    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul  # type: ignore[attr-defined]
    saved = conv.fp32_precision, matmul.fp32_precision
    mode = "tf32" if tf32 else "ieee"
    conv.fp32_precision = matmul.fp32_precision = mode
    try:
        yield
    finally:
        conv.fp32_precision, matmul.fp32_precision = saved


_ATTENTION = (nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)


@contextlib.contextmanager
def forward_ad_kernels(model: nn.Module) -> Iterator[None]:
    """Kernels that have forward-mode derivatives, for the models that need them.

    Some fused kernels have no forward-mode derivative, which the traced
    linearisation and ``torch.func.jvp`` need: oneDNN's LSTM on CPUs
    (``mkldnn_rnn_layer``), the fast path of ``nn.TransformerEncoderLayer``
    and ``nn.MultiheadAttention`` (``_transformer_encoder_layer_fwd``) and
    the flash and memory-efficient attention kernels. Inside this block, for
    a model with recurrent layers oneDNN is off (only then: it also makes CPU
    convolutions about twice slower), for a model with attention layers the
    fast path is off, and scaled-dot-product attention uses its math kernel;
    the settings are restored after. A kernel still without a forward-mode
    derivative makes the products fall back (see
    :class:`hfft.optim.curvature.CurvatureOperator`).
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    modules = list(model.modules())
    recurrent = any(isinstance(m, nn.RNNBase) for m in modules)
    attention = any(isinstance(m, _ATTENTION) for m in modules)
    mkldnn, fast = torch.backends.mkldnn.enabled, torch.backends.mha.get_fastpath_enabled()
    if recurrent:
        torch.backends.mkldnn.enabled = False  # type: ignore[assignment]
    if attention:
        torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        torch.backends.mkldnn.enabled = mkldnn
        torch.backends.mha.set_fastpath_enabled(fast)


@contextlib.contextmanager
def step_mode(model: nn.Module, mode: str) -> Iterator[None]:
    """The model's mode during an HF step; every module's own mode is restored after.

    ``"eval"``/``"train"`` switch the whole model, ``"keep"`` leaves it. A step
    must not change the model's state, so BatchNorm layers in training mode use
    the batch statistics without updating their running averages (their
    ``track_running_stats`` is off for the step). The model runs with kernels
    that have forward-mode derivatives (:func:`forward_ad_kernels`).
    """
    modes = {m: m.training for m in model.modules()}
    if mode != "keep":
        model.train(mode == "train")
    paused = [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats
    ]
    for bn in paused:
        bn.track_running_stats = False
    try:
        with forward_ad_kernels(model):
            yield
    finally:
        for bn in paused:
            bn.track_running_stats = True
        for module, training in modes.items():
            module.training = training


def synced_time(cuda: bool) -> float:
    """``time.perf_counter()``, after the GPU has finished its queued work when ``cuda``.

    Every wall-clock measurement of hfft reads this, so that queued GPU work
    is charged to the interval that queued it.
    """
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter()


class Timer:
    """Wall-clock laps; synchronises CUDA only at lap boundaries."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.start = self.last = self._now()

    def _now(self) -> float:
        return synced_time(self.cuda)

    def lap(self) -> float:
        now = self._now()
        out, self.last = now - self.last, now
        return out

    def total(self) -> float:
        return self._now() - self.start
