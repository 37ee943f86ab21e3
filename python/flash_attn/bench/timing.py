"""Timing: median of repeats after a warm-up, on device events (CUDA) or the wall clock (CPU).

The method follows the peer measurements (shared/reference/peers_h100.md): warm up for a while,
then time single calls and take the median. When one set of inputs fits in the last-level cache
(L2 on a GPU, L3 on a CPU) several sets are allocated and used in turn, so no call finds its
inputs already cached by the previous one.
"""

from __future__ import annotations

import glob
import math
import statistics
import time
from dataclasses import dataclass

import torch


@dataclass
class Budget:
    warmup_s: float = 0.05  # warm-up time before timing (at least 2 calls)
    rep_s: float = 0.2  # timed time per point (at least min_reps calls)
    min_reps: int = 3
    max_reps: int = 100
    interleave: bool = True  # providers of a case take turns (robust to load from other work)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def cache_bytes(device: str) -> int:
    """Size of the last-level cache that inputs could hide in: the GPU's L2, the CPU's L3."""
    if device == "cuda":
        return int(getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 50 << 20))
    best = 0
    for path in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*/size"):
        try:
            text = open(path).read().strip()
        except OSError:
            continue
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        best = max(best, int(text.rstrip("KMG")) * scale)
    return best or 32 << 20


def rotation_sets(io_bytes: int, cache: int, cap: int = 64) -> int:
    """How many input sets to rotate through: enough to cover twice the cache, when they fit."""
    if io_bytes >= cache:
        return 1
    return max(1, min(cap, math.ceil(2 * cache / max(io_bytes, 1))))


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure(calls: list, device: str, budget: Budget) -> list:
    """Times calls[i % len(calls)]() one by one; returns per-call milliseconds."""
    result = measure_interleaved([calls], device, budget)[0]
    if isinstance(result, Exception):
        raise result
    return result


def measure_interleaved(calls_per_provider: list, device: str, budget: Budget) -> list:
    """Like measure for several providers at once, their timed calls taken in turns (A B C A B C
    ...), so load from other work on the machine hits all of them alike. Returns, per provider,
    its per-call milliseconds, or the exception one of its calls raised (it is then left out)."""
    reps = [_warm_up(calls, device, budget) for calls in calls_per_provider]
    times = [[] if isinstance(r, int) else r for r in reps]
    for i in range(max((r for r in reps if isinstance(r, int)), default=0)):
        for p, calls in enumerate(calls_per_provider):
            if isinstance(times[p], list) and i < reps[p]:
                try:
                    times[p].append(_time_one(calls[i % len(calls)], device))
                except Exception as e:  # noqa: BLE001 - reported for this provider only
                    times[p] = e
    _sync(device)  # CUDA: events are read once all calls are queued, as launches overlap
    return [[_ms(t) for t in ts] if isinstance(ts, list) else ts for ts in times]


def _warm_up(calls: list, device: str, budget: Budget):
    """Warm-up calls; returns how many calls to time (or the exception a call raised)."""
    try:
        _sync(device)
        t0, warm = time.perf_counter(), 0
        while warm < 2 or time.perf_counter() - t0 < budget.warmup_s:
            calls[warm % len(calls)]()
            warm += 1
            _sync(device)
    except Exception as e:  # noqa: BLE001
        return e
    per_call = (time.perf_counter() - t0) / warm
    return int(min(budget.max_reps, max(budget.min_reps, budget.rep_s / max(per_call, 1e-9))))


def _time_one(call, device: str):
    """One call: milliseconds on the CPU's wall clock; on a GPU, its (start, end) CUDA events."""
    if device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        call()
        end.record()
        return start, end
    t = time.perf_counter()
    call()
    return (time.perf_counter() - t) * 1e3


def _ms(t) -> float:
    return t[0].elapsed_time(t[1]) if isinstance(t, tuple) else t


def median(times: list) -> float:
    return statistics.median(times)


def copy_bandwidth(device: str, nbytes: int = 256 << 20) -> float:
    """Memory copy bandwidth in bytes/s, counting bytes read plus bytes written (STREAM copy).

    On the CPU torch's copy uses all of torch's threads, the same count every provider gets.
    """
    if device == "cuda":
        nbytes = max(nbytes, 8 * cache_bytes(device))
    src = torch.ones(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    times = measure([lambda: dst.copy_(src)], device, Budget(0.05, 0.3, 5, 50))
    return 2 * nbytes / (median(times) * 1e-3)
