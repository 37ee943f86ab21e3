"""Runs one suite: for each case, check every provider against the reference, then time it."""

from __future__ import annotations

import sys
import time

import torch

from . import check, timing
from .providers import OURS

SCHEMA = "flash_attn.bench/1"
STATUSES = ("ok", "wrong", "unsupported", "error")


class Progress:
    """tqdm when installed, else one plain line per step on stderr."""

    def __init__(self, total: int, desc: str):
        self.total, self.done, self.desc = total, 0, desc
        try:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, file=sys.stderr, leave=True)
        except ImportError:
            self.bar = None

    def step(self, what: str) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.set_postfix_str(what, refresh=False)
            self.bar.update(1)
        else:
            print(f"[{self.desc} {self.done}/{self.total}] {what}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _call(provider, case, x: check.Inputs) -> tuple:
    """One call of the timed operation: (out,) or (out, dq, dk, dv)."""
    if case.op == "decode":
        return (provider.decode(x.q, x.k, x.v),)
    out = provider.fwd(x.q, x.k, x.v, case.causal)
    if case.op == "fwd":
        return (out,)
    return (out,) + torch.autograd.grad(out, (x.q, x.k, x.v), x.dout)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


def check_point(provider, case, x: check.Inputs, ref) -> dict:
    """The row of one (case, provider) after its first call, checked; status "ok" = time it."""
    row = {"provider": provider.name, **case.as_dict(), "status": "ok"}
    reason = provider.supports(case)
    if reason is not None:
        return {**row, "status": "unsupported", "message": reason}
    try:
        row["check"] = ref.check(_call(provider, case, x))
    except Exception as e:  # noqa: BLE001 - a failing provider is reported, not fatal
        return {**row, "status": "error", "message": _first_line(e)}
    if not row["check"]["ok"]:
        return {**row, "status": "wrong", "message": "output differs from the reference"}
    return row


def _add_times(row: dict, case, times, n_sets: int, copy_bw) -> None:
    if isinstance(times, Exception):
        row.update(status="error", message=_first_line(times))
        return
    t = timing.median(times)
    row.update(time_ms=t, times_ms=times, reps=len(times), rotated_sets=n_sets)
    row["tflops"] = case.flops() / (t * 1e-3) / 1e12
    if case.op == "decode":
        row["kv_gbps"] = case.kv_bytes() / (t * 1e-3) / 1e9
        if copy_bw:
            row["kv_fraction_of_copy_bw"] = case.kv_bytes() / (t * 1e-3) / copy_bw


def run_case(case, providers: list, sets: list, ref, device: str, budget, copy_bw, progress=None) -> list:
    """Checks every provider on one case, then times those that passed, their calls in turns."""
    rows = []
    for p in providers:
        if progress is not None:
            progress.step(f"{case.label}: {p.name}")
        rows.append(check_point(p, case, sets[0], ref))
    timed = [(p, r) for p, r in zip(providers, rows) if r["status"] == "ok"]
    calls = [[lambda x=x, p=p: _call(p, case, x) for x in sets] for p, _ in timed]
    if budget.interleave:
        times_per_provider = timing.measure_interleaved(calls, device, budget)
    else:  # one provider after the other: no provider's thread pool can disturb another's
        times_per_provider = [timing.measure_interleaved([c], device, budget)[0] for c in calls]
    for (_, row), times in zip(timed, times_per_provider):
        _add_times(row, case, times, len(sets), copy_bw)
    return rows


def run_cases(cases: list, providers: list, device: str, budget, progress, on_case=None) -> list:
    """All rows of a suite; on_case(rows) is called after each case (incremental JSON)."""
    cache = timing.cache_bytes(device)
    copy_bw = None
    if any(c.op == "decode" for c in cases):
        copy_bw = timing.copy_bandwidth(device)
    rows = []
    for case in cases:
        n_sets = timing.rotation_sets(case.io_bytes(), cache)
        try:
            sets = [check.make_inputs(case, device, seed=i) for i in range(n_sets)]
            ref = check.Reference(case, sets[0])
        except Exception as e:  # noqa: BLE001 - e.g. out of memory for the reference
            for p in providers:
                progress.step(f"{case.label}: {p.name}")
                rows.append(
                    {
                        "provider": p.name,
                        **case.as_dict(),
                        "status": "error",
                        "message": f"inputs/reference: {_first_line(e)}",
                    }
                )
            continue
        rows += run_case(case, providers, sets, ref, device, budget, copy_bw, progress)
        del sets, ref
        if device == "cuda":
            torch.cuda.empty_cache()
        if on_case is not None:
            on_case(rows, copy_bw)
    return rows, copy_bw


def method(device: str, budget, threads: int) -> dict:
    return {
        "statistic": "median of per-call times after a warm-up",
        "interleaved": "the providers of a case take turns call by call" if budget.interleave else "no",
        "timer": "CUDA events around each call" if device == "cuda" else "time.perf_counter around each call",
        "budget": budget.as_dict(),
        "input_rotation": f"when one input set is smaller than the last-level cache "
        f"({timing.cache_bytes(device)} bytes), enough sets to cover twice it "
        f"(at most 64) are used in turn",
        "flops": "fwd 4*b*h*sq*sk*d, halved when causal; fwd_bwd = 3.5x fwd",
        "decode_bytes": "K+V bytes read per call: 2*b*sk*h_k*d*sizeof(dtype)",
        "copy_bandwidth": "torch copy_ of a 256 MiB (GPU: >= 8x L2) buffer, read+write bytes",
        "check": "batch 0, heads of kv head 0, full seqlens: max|x - ref64| <= 2x (grads 3x) "
        "that of a plain same-dtype implementation + floor " + str(check.ATOL),
        "cpu_threads": threads if device == "cpu" else None,
        "ours": OURS,
        "started_unix": time.time(),
    }
