"""Time, peak memory and arithmetic of any call, on the CPU and on CUDA.

Used by :mod:`hfft.diagnostics.bench` and the other benchmarks. Memory and arithmetic are
measured in their own runs, apart from the timed rounds, because the instruments slow the
call down.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch

from hfft.optim.step_context import synced_time

__all__ = ["count_flops", "interleaved_medians", "median_time", "peak_memory", "timed"]


def peak_memory(fn: Callable[[], Any], device: torch.device) -> int:
    """Peak bytes that ``fn`` adds to what was in use before it ran.

    On CUDA this is the caching allocator's peak of allocated tensors. On a
    Linux CPU it is the process's peak resident memory during the call (the
    kernel's high-water mark, reset just before, after returning freed heap
    memory to the system) over the resident memory at the start, so it counts
    everything the call touches, kernels' scratch space included. Elsewhere
    it falls back to the profiler's allocation events, which see tensors
    only, at operator granularity.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return max(0, torch.cuda.max_memory_allocated(device) - base)
    resident = _resident_peak(fn)
    return resident if resident is not None else _profiled_peak(fn)


def _proc_status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise OSError(f"{key} not in /proc/self/status")


def _resident_peak(fn: Callable[[], Any]) -> int | None:
    """Peak resident memory added by ``fn`` (Linux), or ``None`` where unsupported."""
    import ctypes
    import gc

    try:
        libc = ctypes.CDLL("libc.so.6")
        gc.collect()
        libc.malloc_trim(0)  # freed heap memory back to the system: an honest baseline
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak resident set size (VmHWM) to the current one
        base = _proc_status("VmRSS:")
    except OSError:
        return None
    fn()
    return max(0, _proc_status("VmHWM:") - base)


def _profiled_peak(fn: Callable[[], Any]) -> int:
    from torch.profiler import ProfilerActivity, profile

    with warnings.catch_warnings(), _native_stderr_silenced():
        warnings.simplefilter("ignore")
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
    changes: list[tuple[float, int]] = []
    for event in prof.events():
        if event.name == "[memory]":
            delta = event.cpu_memory_usage  # releases, at their time
        else:
            delta = event.self_cpu_memory_usage  # allocations, net of the op's own releases
        if delta:
            at = event.time_range.start if delta > 0 else event.time_range.end
            changes.append((at, delta))
    changes.sort()
    live = peak = 0
    for _, delta in changes:
        live += delta
        peak = max(peak, live)
    return peak


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Discard what native code writes to file descriptor 2 (the profiler's log lines)."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def count_flops(fn: Callable[[], Any]) -> int:
    """Floating-point operations of ``fn``, by ``torch.utils.flop_counter``'s formulas.

    Counts matrix products and convolutions (forward and backward), the
    operations that dominate a network's cost; element-wise work is free.
    Unlike ``FlopCounterMode``, it installs no module hooks, which cannot
    follow ``torch.autograd.grad`` on fresh leaf tensors.
    """
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry

    total = 0

    class Counter(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            nonlocal total
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            count = flop_registry.get(func._overloadpacket)
            if count is not None:
                total += int(count(*args, **kwargs, out_val=out))
            return out

    with Counter():
        fn()
    return total


def timed(fn: Callable[[], Any], cuda: bool) -> float:
    """Seconds of one call (the device synchronised before and after)."""
    start = synced_time(cuda)
    fn()
    return synced_time(cuda) - start


def median_time(fn: Callable[[], Any], cuda: bool, repeats: int) -> float:
    """Median seconds of ``fn`` over ``repeats`` calls after one warm-up call."""
    fn()
    return statistics.median(timed(fn, cuda) for _ in range(repeats))


def interleaved_medians(
    fns: dict[str, Callable[[], Any]], cuda: bool, rounds: int, warmup: int = 1
) -> dict[str, float]:
    """Median seconds of each of ``fns``, all run once per round, round after round.

    Every other round runs them backwards, so that no operation always follows
    the same one (a product then uses the operator its setup built the round
    before, and neither of two loops always runs on a warm cache); drifts in
    machine load hit every operation alike. The ``warmup`` rounds are not
    timed.
    """
    samples: dict[str, list[float]] = {k: [] for k in fns}
    order = list(fns.items())
    for r in range(warmup + rounds):
        for key, fn in order if r < warmup or r % 2 == 0 else order[::-1]:
            t = timed(fn, cuda)
            if r >= warmup:
                samples[key].append(t)
    return {k: statistics.median(s) for k, s in samples.items()}
