"""Host time per call of each flash_attn entry point on tiny shapes, where the Python layer
dominates, next to the bare library call (a prebuilt args struct through ctypes) and torch SDPA.

    PYTHONPATH=python FLASHATTN_LIBRARY=build/libflashattn.so python3 bench/host_overhead.py [--device cuda]

Shapes: b=1, s=1, h=8, d=64; the kv-cache step attends to 8 of 16 cached tokens. Each row is
the best of --rounds (5) rounds of n back-to-back calls (one synchronize per round on cuda, so a row there
is max(host, GPU) per call). The "C" rows are the library alone: the difference to a row above is
the Python share.
"""

import argparse
import ctypes
import time

import torch

from flash_attn import (
    _engine,
    _lib,
    flash_attn_func,
    flash_attn_kvpacked_func,
    flash_attn_qkvpacked_func,
    flash_attn_varlen_func,
    flash_attn_with_kvcache,
)


def best_us(fn, n, sync, rounds):
    for _ in range(n // 10):
        fn()
    sync()
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        sync()
        best = min(best, (time.perf_counter() - t) / n)
    return best * 1e6


def bare_call(op, tensors, scale, device):
    """fa_fwd / fa_fwd_kvcache with args, options and workspace prepared once: the library's own cost."""
    lib, ctx = _lib.lib(), _engine.context(device)
    args = _lib._OPS[op][0]()
    for name, t in tensors.items():
        setattr(args, name, _lib.to_fa_tensor(name, t))
    opts = _lib.FaOptions(*_lib.make_options(scale))
    if device.type == "cuda":
        ctx.set_stream(torch.cuda.current_stream(device).cuda_stream)
    nbytes = ctypes.c_size_t(0)
    _lib.check(getattr(lib, _lib._OPS[op][1])(ctx.handle, args, opts, nbytes))
    workspace = torch.empty(max(nbytes.value, 1), dtype=torch.uint8, device=device)
    run, ptr, size = getattr(lib, _lib._OPS[op][2]), workspace.data_ptr(), nbytes.value

    def call():
        run(ctx.handle, args, opts, ptr, size)

    call.workspace = workspace  # kept alive with the closure
    return call


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("-n", type=int, default=2000, help="calls per round")
    p.add_argument("--threads", type=int, default=1, help="torch (and so cpu backend) threads")
    p.add_argument("--rounds", type=int, default=5, help="rounds per row (the best counts); more on a busy machine")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    b, s, h, d = 1, 1, 8, 64
    rand = lambda *shape: torch.randn(*shape, dtype=dtype, device=device)  # noqa: E731
    q, k, v = rand(b, s, h, d), rand(b, s, h, d), rand(b, s, h, d)
    qkv, kv = rand(b, s, 3, h, d), rand(b, s, 2, h, d)
    q1, k1, v1 = q[0], k[0], v[0]  # varlen layout (total, h, d)
    cu = torch.tensor([0, s], dtype=torch.int32, device=device)
    k_cache, v_cache = rand(b, 16, h, d), rand(b, 16, h, d)
    seqlens = torch.tensor([8], dtype=torch.int32, device=device)
    k_new, v_new = rand(b, 1, h, d), rand(b, 1, h, d)
    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
    dout = torch.ones_like(q)
    out, lse = torch.empty_like(q), torch.empty(b, h, s, device=device)
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
    qtg, ktg, vtg = (t.transpose(1, 2) for t in (qg, kg, vg))
    doutt = dout.transpose(1, 2)
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def fwd_bwd():
        flash_attn_func(qg, kg, vg).backward(dout)

    rows = [
        ("flash_attn_func", lambda: flash_attn_func(q, k, v)),
        ("flash_attn_qkvpacked_func", lambda: flash_attn_qkvpacked_func(qkv)),
        ("flash_attn_kvpacked_func", lambda: flash_attn_kvpacked_func(q, kv)),
        ("flash_attn_varlen_func", lambda: flash_attn_varlen_func(q1, k1, v1, cu, cu, s, s)),
        ("flash_attn_with_kvcache", lambda: flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=seqlens)),
        ("  with new k/v", lambda: flash_attn_with_kvcache(q, k_cache, v_cache, k_new, v_new, cache_seqlens=seqlens)),
        ("flash_attn_func fwd+bwd", fwd_bwd),
        ("C fa_fwd", bare_call("fwd", dict(q=q, k=k, v=v, out=out, softmax_lse=lse), d**-0.5, device)),
        (
            "C fa_fwd_kvcache",
            bare_call(
                "kvcache",
                dict(q=q, k_cache=k_cache, v_cache=v_cache, cache_seqlens=seqlens, out=out, softmax_lse=lse),
                d**-0.5,
                device,
            ),
        ),
        ("torch SDPA", lambda: sdpa(qt, kt, vt)),
        ("torch SDPA fwd+bwd", lambda: sdpa(qtg, ktg, vtg).backward(doutt)),
    ]
    print(f"host time per call, {device}, {dtype}, b={b} s={s} h={h} d={d}, torch threads {a.threads}")
    for name, fn in rows:
        n = a.n // 4 if "bwd" in name else a.n
        print(f"{name:28s} {best_us(fn, n, sync, a.rounds):8.1f} us")


if __name__ == "__main__":
    main()
