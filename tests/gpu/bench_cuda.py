"""Forward benchmark of the cuda backend against torch SDPA FLASH (FA2) and CUDNN, same run.

Method (peers_h100.md): triton.testing.do_bench median (warmup 50 ms, rep 200 ms), fresh
torch.randn inputs, layout (batch, seqlen, heads, dim), batch = 16384 / seqlen,
heads = 2048 / hdim, FLOPs = 4 b h s^2 d (/2 causal). Also: the first call's compile time
(empty JIT cache), the host cost of a cached call, and a decode shape.

    FLASHATTN_LIBRARY=build-gpu/libflashattn.so python3 tests/gpu/bench_cuda.py [--quick]
Needs only torch and triton; talks to libflashattn through a minimal ctypes mirror.
"""
import ctypes
import os
import sys
import tempfile
import time

import torch
import triton.testing
from torch.nn.attention import SDPBackend, sdpa_kernel

MAX_DIMS = 4


class Tensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("dtype", ctypes.c_int32), ("ndim", ctypes.c_int32),
                ("shape", ctypes.c_int64 * MAX_DIMS), ("stride", ctypes.c_int64 * MAX_DIMS)]


class Options(ctypes.Structure):
    _fields_ = [("softmax_scale", ctypes.c_float), ("causal", ctypes.c_bool),
                ("window_left", ctypes.c_int32), ("window_right", ctypes.c_int32),
                ("softcap", ctypes.c_float), ("dropout_p", ctypes.c_float),
                ("rng_seed", ctypes.c_uint64), ("rng_offset", ctypes.c_uint64),
                ("deterministic", ctypes.c_bool), ("num_splits", ctypes.c_int32),
                ("rotary_interleaved", ctypes.c_bool)]


class FwdArgs(ctypes.Structure):
    _fields_ = [(n, Tensor) for n in ("q", "k", "v", "cu_seqlens_q", "cu_seqlens_k", "seqused_k",
                                      "leftpad_k", "block_table", "alibi_slopes")] + \
               [("max_seqlen_q", ctypes.c_int64), ("max_seqlen_k", ctypes.c_int64)] + \
               [(n, Tensor) for n in ("out", "softmax_lse", "attn_probs")]


class KvArgs(ctypes.Structure):
    _fields_ = [(n, Tensor) for n in ("q", "k_cache", "v_cache", "k_new", "v_new", "cache_seqlens",
                                      "cache_batch_idx", "cache_leftpad", "block_table",
                                      "rotary_cos", "rotary_sin", "alibi_slopes", "out",
                                      "softmax_lse")]


DT = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.int32: 3}

lib = ctypes.CDLL(os.environ.get("FLASHATTN_LIBRARY", "build-gpu/libflashattn.so"))
lib.fa_options_default.restype = Options
lib.fa_last_error_message.restype = ctypes.c_char_p
lib.fa_jit_cache_dir.restype = ctypes.c_char_p
lib.fa_abi_sizeof.restype = ctypes.c_size_t
size = {"fa_tensor": Tensor, "fa_options": Options, "fa_fwd_args": FwdArgs, "fa_kvcache_args": KvArgs}
for name, cls in size.items():
    assert lib.fa_abi_sizeof(name.encode()) == ctypes.sizeof(cls), name


def check(status):
    if status != 0:
        raise RuntimeError(lib.fa_last_error_message().decode())


def tensor(t):
    if t is None:
        return Tensor()
    r = Tensor(t.data_ptr(), DT[t.dtype], t.dim())
    for i in range(t.dim()):
        r.shape[i], r.stride[i] = t.shape[i], t.stride(i)
    return r


torch.cuda.init()
ctx = ctypes.c_void_p()
check(lib.fa_context_create(2, 0, ctypes.byref(ctx)))


def set_stream():
    check(lib.fa_context_set_stream(ctx, ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)))


def ours_fwd(q, k, v, causal):
    b, s, h, d = q.shape
    out = torch.empty_like(q)
    lse = torch.empty(b, h, s, device=q.device, dtype=torch.float32)
    args = FwdArgs(q=tensor(q), k=tensor(k), v=tensor(v), max_seqlen_q=s, max_seqlen_k=k.shape[1],
                   out=tensor(out), softmax_lse=tensor(lse))
    opts = lib.fa_options_default()
    opts.causal = causal
    argp, optp = ctypes.byref(args), ctypes.byref(opts)

    def run():
        return lib.fa_fwd(ctx, argp, optp, None, ctypes.c_size_t(0))
    return run, out


def sdpa(q, k, v, causal, backend):
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))

    def run():
        with sdpa_kernel(backend):
            return torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, is_causal=causal)
    return run


def bench(fn):
    return triton.testing.do_bench(fn, warmup=50, rep=200, return_mode="median")


def arg(name, default):
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default


def main():
    quick = "--quick" in sys.argv
    only = arg("--only", "")  # e.g. "bfloat16:128:0:4096" = dtype:d:causal:seqlen, core table only
    set_stream()
    print(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}, cache {lib.fa_jit_cache_dir().decode()}, tiles {os.environ.get('FLASHATTN_CUDA_TILES', 'table')}")
    if only:
        dt, d, causal, s = only.split(":")
        dtype = getattr(torch, dt)
        return table([dtype], [int(d)], [bool(int(causal))], [int(s)], peers=False)
    # First call of an uncached variant: compile + load (fresh cache folder, new process state
    # for this variant: fp16 d96 is used nowhere else here).
    q = torch.randn(1, 128, 4, 96, device="cuda", dtype=torch.float16)
    run, _ = ours_fwd(q, q, q, False)
    t0 = time.perf_counter()
    check(run())
    torch.cuda.synchronize()
    print(f"first call (NVRTC compile + load of one variant): {time.perf_counter() - t0:.3f} s")
    # Host cost of a cached call: tiny problem, many calls, no sync in between.
    q = torch.randn(1, 16, 1, 64, device="cuda", dtype=torch.bfloat16)
    run, _ = ours_fwd(q, q, q, False)
    for _ in range(100):
        run()
    torch.cuda.synchronize()
    n = 2000
    t0 = time.perf_counter()
    for _ in range(n):
        run()
    host = (time.perf_counter() - t0) / n * 1e6
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        lib.fa_version_number()
    ctypes_cost = (time.perf_counter() - t0) / n * 1e6
    print(f"cached call, host time per fa_fwd: {host:.2f} us (a bare ctypes call: {ctypes_cost:.2f} us)")

    seqlens = [512, 2048, 8192] if quick else [512, 1024, 2048, 4096, 8192, 16384]
    table((torch.bfloat16, torch.float16), (64, 128), (False, True), seqlens, peers=True)
    decode()


def table(dtypes, dims, causals, seqlens, peers):
    for dtype in dtypes:
        for d in dims:
            for causal in causals:
                for s in seqlens:
                    b, h = 16384 // s, 2048 // d
                    q, k, v = (torch.randn(b, s, h, d, device="cuda", dtype=dtype) for _ in range(3))
                    run, out = ours_fwd(q, k, v, causal)
                    check(run())
                    ref = sdpa(q, k, v, causal, SDPBackend.FLASH_ATTENTION)().transpose(1, 2)
                    err = (out.float() - ref.float()).abs().max().item()
                    flops = 4 * b * h * s * s * d / (2 if causal else 1)
                    t_ours = bench(run)
                    if not peers:
                        print(f"{str(dtype)[6:]} d{d} causal={causal} s{s}: ours {flops / t_ours / 1e9:.1f} TFLOPS, max|ours-FA2| {err:.2e}")
                        continue
                    t_fa2 = bench(sdpa(q, k, v, causal, SDPBackend.FLASH_ATTENTION))
                    t_cudnn = bench(sdpa(q, k, v, causal, SDPBackend.CUDNN_ATTENTION))
                    tf = [flops / t / 1e9 for t in (t_ours, t_fa2, t_cudnn)]
                    print(f"{str(dtype)[6:]:8} d{d:<3} {'causal' if causal else 'full  '} s{s:<6} "
                          f"ours {tf[0]:6.1f}  FA2 {tf[1]:6.1f}  cuDNN {tf[2]:6.1f} TFLOPS  "
                          f"ours/FA2 {tf[0] / tf[1]:.2f}  max|ours-FA2| {err:.2e}", flush=True)
                    del q, k, v, out


def decode():
    """One query token against a long cache, GQA, through fa_fwd_kvcache."""
    for b, sk, h, hk in ((1, 32768, 32, 8), (16, 8192, 32, 8), (64, 4096, 32, 32)):
        d = 128
        q = torch.randn(b, 1, h, d, device="cuda", dtype=torch.bfloat16)
        kc, vc = (torch.randn(b, sk, hk, d, device="cuda", dtype=torch.bfloat16) for _ in range(2))
        out = torch.empty_like(q)
        lse = torch.empty(b, h, 1, device="cuda", dtype=torch.float32)
        args = KvArgs(q=tensor(q), k_cache=tensor(kc), v_cache=tensor(vc), out=tensor(out),
                      softmax_lse=tensor(lse))
        opts = lib.fa_options_default()
        ws = ctypes.c_size_t(0)
        check(lib.fa_fwd_kvcache_workspace_size(ctx, ctypes.byref(args), ctypes.byref(opts), ctypes.byref(ws)))
        buf = torch.empty(max(ws.value, 1), dtype=torch.uint8, device="cuda")

        def run():
            return lib.fa_fwd_kvcache(ctx, ctypes.byref(args), ctypes.byref(opts),
                                      ctypes.c_void_p(buf.data_ptr()), ws)
        check(run())
        t = bench(run)
        gbs = 2 * kc.numel() * 2 / t / 1e6
        print(f"decode b{b} cache {sk} h{h}/{hk} d{d}: {t * 1e3:.1f} us, K+V {gbs:.0f} GB/s")


if __name__ == "__main__":
    main()
