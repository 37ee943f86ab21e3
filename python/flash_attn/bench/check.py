"""Correctness gate: every provider's output is checked before it is timed.

flash-attn's rule: the error of a kernel against a float64 reference must be at most 2x (3x for
gradients) the error of a plain implementation in the inputs' dtype, plus a small floor. The
check covers the first batch entry and the query heads that share the first kv head, at the full
sequence lengths of the timed case, which keeps the float64 reference cheap on long sequences.
A non-finite value always fails.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

FWD_FACTOR, GRAD_FACTOR = 2.0, 3.0
ATOL = {"float32": 1e-5, "float16": 1e-4, "bfloat16": 1e-3}  # floor under the plain error


@dataclass
class Inputs:
    """One set of tensors of a case, flash-attn layout (b, s, h, d)."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    dout: torch.Tensor | None = None


def make_inputs(case, device: str, seed: int) -> Inputs:
    gen = torch.Generator(device=device).manual_seed(seed)
    dtype = getattr(torch, case.dtype)

    def randn(*shape):  # generated where it is used: large GPU inputs stay fast
        return torch.randn(*shape, generator=gen, device=device, dtype=dtype)

    q = randn(case.batch, case.seqlen_q, case.nheads, case.head_dim)
    k = randn(case.batch, case.seqlen_k, case.nheads_k, case.head_dim)
    v = randn(case.batch, case.seqlen_k, case.nheads_k, case.head_dim)
    if case.op != "fwd_bwd":
        return Inputs(q, k, v)
    return Inputs(q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), randn(*q.shape))


def _slice(x: Inputs, group: int) -> Inputs:
    """Batch 0, the query heads of kv head 0, kv head 0; detached."""

    def cut(t, heads):
        return t[:1, :, :heads].detach()

    dout = cut(x.dout, group) if x.dout is not None else None
    return Inputs(cut(x.q, group), cut(x.k, 1), cut(x.v, 1), dout)


def attention_plain(q, k, v, causal: bool):
    """Textbook attention in q's dtype, (b, s, h, d) layout; kv heads repeated for GQA."""
    group = q.shape[2] // k.shape[2]
    k = k.repeat_interleave(group, dim=2)
    v = v.repeat_interleave(group, dim=2)
    s = torch.einsum("bqhd,bkhd->bhqk", q * (q.shape[-1] ** -0.5), k)
    if causal:  # bottom-right aligned, as flash-attn
        sq, sk = q.shape[1], k.shape[1]
        keep = torch.ones(sq, sk, dtype=torch.bool, device=q.device).tril(sk - sq)
        s = s.masked_fill(~keep, float("-inf"))
    return torch.einsum("bhqk,bkhd->bqhd", torch.softmax(s, dim=-1), v)


def _run_plain(x: Inputs, causal: bool, dtype) -> tuple:
    """Output (and gradients when dout is set) of attention_plain computed in dtype."""
    q, k, v = (t.to(dtype).requires_grad_(x.dout is not None) for t in (x.q, x.k, x.v))
    out = attention_plain(q, k, v, causal)
    if x.dout is None:
        return (out.detach(),)
    grads = torch.autograd.grad(out, (q, k, v), x.dout.to(dtype))
    return (out.detach(),) + grads


def _max_err(a, ref) -> float:
    d = (a.double() - ref).abs().max().item()
    return d if math.isfinite(d) else math.inf


class Reference:
    """Float64 and plain same-dtype results on the slice of one input set."""

    def __init__(self, case, x: Inputs):
        self.case = case
        self.group = case.nheads // case.nheads_k
        self.slice = _slice(x, self.group)
        dev = x.q.device
        ref_dev = dev if dev.type == "cuda" else torch.device("cpu")
        xs = Inputs(
            *(
                t.to(ref_dev) if t is not None else None
                for t in (self.slice.q, self.slice.k, self.slice.v, self.slice.dout)
            )
        )
        self.exact = _run_plain(xs, case.causal, torch.float64)
        self.plain = _run_plain(xs, case.causal, getattr(torch, case.dtype))

    def check(self, results: tuple) -> dict:
        """results: (out,) or (out, dq, dk, dv) of the provider on the full input set."""
        names = ("out", "dq", "dk", "dv")
        heads = (self.group, self.group, 1, 1)
        report = {"ok": True, "errors": {}}
        for i, (name, got) in enumerate(zip(names, results)):
            got = got[:1, :, : heads[i]].detach().to(self.exact[i].device)
            factor = FWD_FACTOR if i == 0 else GRAD_FACTOR
            err = _max_err(got, self.exact[i])
            plain = _max_err(self.plain[i], self.exact[i])
            tol = factor * plain + ATOL[self.case.dtype]
            finite = bool(torch.isfinite(got).all())
            ok = finite and err <= tol
            report["errors"][name] = {"max_abs": err, "plain_max_abs": plain, "tol": tol, "finite": finite, "ok": ok}
            report["ok"] = report["ok"] and ok
        return report
