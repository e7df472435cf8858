"""Timing helpers for the GPU suite that also run (with fewer figures) on CPU.

On CUDA a call is timed twice: with CUDA events (time on the GPU's timeline, idle gaps
included) and with the host clock after a synchronisation. The profiler gives the time the
GPU was actually busy; what is left of the event time is the GPU waiting for the host (a
synchronisation, then the launches that follow it). ``set_sync_debug_mode`` counts the
synchronisations themselves.
"""

from __future__ import annotations

import statistics
import time
import warnings
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch


def is_cuda(device: torch.device | str) -> bool:
    return torch.device(device).type == "cuda"


def synchronize(device: torch.device | str) -> None:
    if is_cuda(device):
        torch.cuda.synchronize(device)


def timed_calls(fn: Callable[[], Any], device, repeats: int, warmup: int) -> dict[str, Any]:
    """Median milliseconds of ``fn()``: CUDA-event time (None on CPU) and host wall time."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    events, walls = [], []
    for _ in range(repeats):
        if is_cuda(device):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin = time.perf_counter()
            start.record()
            fn()
            end.record()
            end.synchronize()
            walls.append((time.perf_counter() - begin) * 1000)
            events.append(start.elapsed_time(end))
        else:
            begin = time.perf_counter()
            fn()
            walls.append((time.perf_counter() - begin) * 1000)
    return {
        "event_ms": statistics.median(events) if events else None,
        "wall_ms": statistics.median(walls),
        "repeats": repeats,
        "warmup": warmup,
    }


def count_syncs(fn: Callable[[], Any], device) -> int | None:
    """Host synchronisations one call of ``fn`` makes (CUDA only; None on CPU)."""
    if not is_cuda(device):
        return None
    synchronize(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    synchronize(device)
    return sum("synchroniz" in str(item.message) for item in caught)


def _merged_length(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if stop <= end:
            continue
        total += stop - max(start, end)
        end = stop
    return total


def device_activity(fn: Callable[[], Any], device) -> dict[str, Any] | None:
    """One profiled call: GPU-busy milliseconds (union of kernel and copy intervals) and the
    names of the kernels that ran, with counts. None on CPU or if the profiler fails."""
    if not is_cuda(device):
        return None
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    synchronize(device)
    try:
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            fn()
            synchronize(device)
    except Exception as error:  # the profiler is optional: report why it gave nothing
        return {"error": f"{type(error).__name__}: {error}"}
    kernels = [event for event in prof.events() if event.device_type == DeviceType.CUDA]
    intervals = [(event.time_range.start, event.time_range.end) for event in kernels]
    return {
        "busy_ms": _merged_length(intervals) / 1000 if kernels else None,
        "kernels": dict(Counter(event.name for event in kernels)),
    }


def peak_bytes(fn: Callable[[], Any], device) -> int | None:
    """Peak CUDA memory allocated during ``fn()`` above what was allocated before it."""
    if not is_cuda(device):
        return None
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before
