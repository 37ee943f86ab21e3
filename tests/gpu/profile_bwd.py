"""Per-kernel GPU time of one fwd+bwd step, ours next to torch SDPA FLASH (FA2), from the CUDA
profiler (CUPTI sees the kernels the library launches through the driver API too).

    FLASHATTN_LIBRARY=build-gpu/libflashattn.so PYTHONPATH=python python3 tests/gpu/profile_bwd.py \
        [--shapes bf16:128:1:1024 ...]

A shape is dtype:head_dim:causal:seqlen with batch = 16384 / seqlen, heads = 2048 / head_dim
(the benchmark convention of docs/benchmarks.md). Prints the mean time per step of each kernel.
"""

import argparse
from collections import defaultdict

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import ProfilerActivity, profile

from flash_attn import flash_attn_func

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def step_ours(q, k, v, do, causal):
    out = flash_attn_func(q, k, v, causal=causal)
    out.backward(do)


def step_fa2(q, k, v, do, causal):
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal
        )
    out.transpose(1, 2).backward(do)


def kernel_times(fn, reps):
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    times = defaultdict(float)
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            times[e.name[:60]] += e.device_time_total / reps
    return times


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", nargs="*", default=["bf16:128:1:1024", "bf16:64:1:1024", "bf16:64:0:1024"])
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args()
    for shape in args.shapes:
        dt, hd, causal, s = shape.split(":")
        hd, causal, s = int(hd), causal == "1", int(s)
        b, h = 16384 // s, 2048 // hd
        q, k, v, do = (torch.randn(b, s, h, hd, device="cuda", dtype=DTYPES[dt]) for _ in range(4))
        for t in (q, k, v):
            t.requires_grad_(True)
        flops = 4 * b * h * s * s * hd * (0.5 if causal else 1) * 3.5
        for name, fn in (("ours", step_ours), ("fa2", step_fa2)):
            times = kernel_times(lambda: fn(q, k, v, do, causal), args.reps)
            total = sum(times.values())
            print(f"{shape} {name}: {total:8.1f} us/step  {flops / total / 1e6:6.1f} TFLOPS")
            for kname, us in sorted(times.items(), key=lambda x: -x[1]):
                if us > 0.01 * total:
                    print(f"    {us:8.1f} us  {kname}")


if __name__ == "__main__":
    main()
