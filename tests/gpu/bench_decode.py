"""Decode on the GPU alone: K+V bytes per call over GPU time, ours (flash_attn_with_kvcache) vs
SDPA FLASH (FA2) and CUDNN, each timed as a CUDA graph of 8 calls over caches that together
exceed L2, so host overhead (which bounds `python -m flash_attn bench --suite decode` at short
caches) does not count. Also prints the host time per call of ours and of SDPA.

    FLASHATTN_LIBRARY=build-gpu/libflashattn.so PYTHONPATH=python python3 tests/gpu/bench_decode.py \\
        [--shapes b:h:hk:d:s,...] [--tiles nwarps,stages,kc ...] [--splits 0,4]
"""

import argparse
import os
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from flash_attn import flash_attn_with_kvcache

CALLS = 8  # calls per graph
DEFAULT_SHAPES = "8:32:8:128:2048,8:32:8:128:8192,8:32:8:128:65536,8:32:8:64:4096,8:32:8:64:65536,1:32:8:128:32768"


def event_us(fn, iters):
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / iters * 1e3


def graph_us(calls):
    """Median GPU time of one call, from a graph of CALLS calls taking calls in turn."""
    for c in calls:
        c()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(CALLS):
            calls[i % len(calls)]()
    return sorted(event_us(graph.replay, 5) for _ in range(5))[2] / CALLS


def host_us(fn, n=3000):
    for _ in range(200):
        fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    dt = (time.perf_counter() - t) / n * 1e6
    torch.cuda.synchronize()
    return dt


def cell(label, us, kv_bytes, copy):
    return f"{label} {us:.1f}us {kv_bytes / us / 1e3:.0f}GB/s {100 * kv_bytes / us / 1e-6 / copy:.0f}%"


def sdpa(backend, q, k, v):
    with sdpa_kernel(backend):
        return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default=DEFAULT_SHAPES, help="batch:nheads:nheads_k:headdim:cache_len,...")
    ap.add_argument("--tiles", nargs="*", default=[""], help="FLASHATTN_CUDA_DECODE values ('' = table)")
    ap.add_argument("--splits", default="0", help="num_splits values, e.g. 0,1,4")
    args = ap.parse_args()
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    src = torch.ones(8 * l2, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    copy = 2 * src.numel() / (event_us(lambda: dst.copy_(src), 20) * 1e-6)
    print(f"{torch.cuda.get_device_name()}: copy {copy / 1e9:.0f} GB/s (read+write)")
    q = torch.randn(1, 1, 32, 128, device="cuda", dtype=torch.bfloat16)
    kc = torch.randn(1, 64, 8, 128, device="cuda", dtype=torch.bfloat16)
    qt, kt = q.transpose(1, 2), kc.transpose(1, 2)
    print(
        f"host us per call: flash_attn_with_kvcache {host_us(lambda: flash_attn_with_kvcache(q, kc, kc)):.1f}, "
        f"sdpa-flash {host_us(lambda: sdpa(SDPBackend.FLASH_ATTENTION, qt, kt, kt)):.1f}"
    )
    for shape in args.shapes.split(","):
        b, h, hk, d, s = (int(x) for x in shape.split(":"))
        kv_bytes = 2 * b * s * hk * d * 2
        n_sets = max(1, min(CALLS, -(-3 * l2 // kv_bytes)))
        sets = [
            (
                torch.randn(b, 1, h, d, device="cuda", dtype=torch.bfloat16),
                torch.randn(b, s, hk, d, device="cuda", dtype=torch.bfloat16),
                torch.randn(b, s, hk, d, device="cuda", dtype=torch.bfloat16),
            )
            for _ in range(n_sets)
        ]
        cells = []
        for tiles in args.tiles:
            if tiles:
                os.environ["FLASHATTN_CUDA_DECODE"] = tiles
            for n in (int(x) for x in args.splits.split(",")):
                calls = [lambda q=q, k=k, v=v, n=n: flash_attn_with_kvcache(q, k, v, num_splits=n) for q, k, v in sets]
                cells.append(cell(f"[{tiles or 'table'} splits {n}]", graph_us(calls), kv_bytes, copy))
            os.environ.pop("FLASHATTN_CUDA_DECODE", None)
        for name, backend in (("sdpa-flash", SDPBackend.FLASH_ATTENTION), ("sdpa-cudnn", SDPBackend.CUDNN_ATTENTION)):
            tr = [(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)) for q, k, v in sets]
            cells.append(
                cell(f"[{name}]", graph_us([lambda t=t, be=backend: sdpa(be, *t) for t in tr]), kv_bytes, copy)
            )
        print(f"b{b} h{h}/{hk} d{d} s{s}: " + " | ".join(cells), flush=True)
        del sets
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
