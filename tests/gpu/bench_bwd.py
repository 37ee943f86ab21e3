"""Backward benchmark of the cuda backend against torch SDPA FLASH (FA2) and CUDNN, same run.

bwd alone: torch.autograd.grad(out, (q, k, v), dout, retain_graph=True) on a graph made once;
fwd+bwd: forward then that grad. do_bench median (warmup 50 ms, rep 200 ms), batch = 16384 /
seqlen, heads = 2048 / hdim, FLOPs bwd = 2.5 x fwd (4 b h s^2 d, /2 causal), fwd+bwd = 3.5 x.
Also max |grad ours - grad FA2| per shape.

    PYTHONPATH=python FLASHATTN_LIBRARY=build-gpu/libflashattn.so python3 tests/gpu/bench_bwd.py \
        [--no-peers] [--only bfloat16:128:0:4096 ...]
"""
import sys

import torch
import triton.testing
from torch.nn.attention import SDPBackend, sdpa_kernel

from flash_attn import flash_attn_func


PEERS = "--no-peers" not in sys.argv  # tile sweeps: ours only


def shapes():
    args = [a for a in sys.argv[1:] if a != "--no-peers"]
    if args and args[0] == "--only":
        for spec in args[1:]:
            dt, d, c, s = spec.split(":")
            yield getattr(torch, dt), int(d), bool(int(c)), int(s)
        return
    for d in (64, 128):
        for causal in (False, True):
            for s in (1024, 4096):
                yield torch.bfloat16, d, causal, s


def bench(fn):
    return triton.testing.do_bench(fn, warmup=50, rep=200, return_mode="median")


def main():
    torch.manual_seed(0)
    print(f"device {torch.cuda.get_device_name()} torch {torch.__version__}")
    print("shape | bwd TFLOPS ours / FA2 / cuDNN | fwd+bwd ours / FA2 / cuDNN | max|dq|,|dk|,|dv| diff vs FA2")
    for dtype, d, causal, s in shapes():
        b, h = max(1, 16384 // s), 2048 // d
        fwd_flops = 4 * b * h * s * s * d / (2 if causal else 1)
        q, k, v, do = (torch.randn(b, s, h, d, device="cuda", dtype=dtype) for _ in range(4))
        ours = [t.clone().requires_grad_() for t in (q, k, v)]
        peer = [t.transpose(1, 2).contiguous().requires_grad_() for t in (q, k, v)]
        do_t = do.transpose(1, 2).contiguous()

        def ours_fwd():
            return flash_attn_func(*ours, causal=causal)

        def peer_fwd():
            return torch.nn.functional.scaled_dot_product_attention(*peer, is_causal=causal)

        res = {}
        out = ours_fwd()
        g_ours = torch.autograd.grad(out, ours, do, retain_graph=True)
        res["ours"] = (bench(lambda: torch.autograd.grad(out, ours, do, retain_graph=True)),
                       bench(lambda: torch.autograd.grad(ours_fwd(), ours, do)))
        g_fa2 = None
        for name, backend in (("FA2", SDPBackend.FLASH_ATTENTION), ("cuDNN", SDPBackend.CUDNN_ATTENTION)):
            try:
                if not PEERS:
                    raise RuntimeError("not timed (--no-peers)")
                with sdpa_kernel(backend):
                    o = peer_fwd()
                    g = torch.autograd.grad(o, peer, do_t, retain_graph=True)
                    if name == "FA2":
                        g_fa2 = [x.transpose(1, 2) for x in g]
                    res[name] = (bench(lambda: torch.autograd.grad(o, peer, do_t, retain_graph=True)),
                                 bench(lambda: torch.autograd.grad(peer_fwd(), peer, do_t)))
            except RuntimeError as e:
                res[name] = (float("nan"), float("nan"))
                print(f"  {name}: {str(e).splitlines()[0]}")
        tf = lambda ms, f: f / ms / 1e9
        bwd = " / ".join(f"{tf(res[n][0], 2.5 * fwd_flops):.0f}" for n in ("ours", "FA2", "cuDNN"))
        fb = " / ".join(f"{tf(res[n][1], 3.5 * fwd_flops):.0f}" for n in ("ours", "FA2", "cuDNN"))
        diff = ",".join(f"{(a.float() - r.float()).abs().max().item():.2e}" for a, r in zip(g_ours, g_fa2)) \
            if g_fa2 else "n/a"
        print(f"{str(dtype)[6:]} d{d} {'causal' if causal else 'full'} b{b} h{h} s{s} | {bwd} | {fb} | {diff}",
              flush=True)


if __name__ == "__main__":
    main()
