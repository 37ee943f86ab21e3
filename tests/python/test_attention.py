"""Batched forward and backward (flash_attn_func, kvpacked, qkvpacked) against the float64
reference, by flash-attn's rule: error <= 2x (gradients 3x) that of a same-dtype implementation.

The grid is sampled, not crossed: every dtype, head dim, (s_q, s_k) pair and feature (GQA/MQA,
causal, window, softcap, ALiBi) appears, in combinations that keep the run short on 2 cores.
"""

import pytest
import torch
from reference import BWD_FACTOR, FWD_FACTOR, assert_rule, attention_ref

from flash_attn import flash_attn_func, flash_attn_kvpacked_func, flash_attn_qkvpacked_func

F16, BF16, F32 = torch.float16, torch.bfloat16, torch.float32

# (api, dtype, d, (s_q, s_k), (h, h_k), causal, window, softcap, alibi)
CASES = [
    ("func", F16, 64, (113, 203), (4, 4), False, (-1, -1), 0.0, False),
    ("func", BF16, 64, (113, 203), (6, 2), True, (-1, -1), 0.0, False),
    ("func", F32, 59, (1, 239), (4, 1), True, (-1, -1), 0.0, False),
    ("func", F16, 8, (113, 203), (2, 2), False, (17, 5), 0.0, False),
    ("func", BF16, 111, (128, 217), (3, 3), False, (-1, -1), 50.0, False),
    ("func", F32, 128, (203, 113), (2, 1), True, (-1, -1), 0.0, True),
    ("func", F16, 256, (1023, 1024), (1, 1), True, (-1, -1), 0.0, False),
    ("func", BF16, 256, (113, 203), (4, 2), False, (-1, -1), 0.0, True),
    ("func", F16, 128, (1, 239), (2, 2), False, (-1, 0), 0.0, False),
    ("func", BF16, 8, (1023, 1024), (1, 1), False, (64, 64), 0.0, False),
    ("func", F32, 111, (1023, 1024), (1, 1), True, (-1, -1), 30.0, False),
    ("func", F32, 256, (1, 239), (3, 3), True, (-1, -1), 10.0, True),
    ("func", BF16, 128, (113, 203), (4, 2), True, (40, 0), 0.0, True),
    ("func", F32, 8, (64, 64), (2, 2), False, (3, 300), 0.0, False),
    ("kvpacked", F16, 59, (113, 203), (6, 3), False, (32, -1), 0.0, False),
    ("kvpacked", F32, 64, (128, 217), (2, 1), True, (-1, -1), 5.0, False),
    ("qkvpacked", F16, 128, (97, 97), (3, 3), True, (-1, -1), 0.0, False),
    ("qkvpacked", BF16, 59, (200, 200), (2, 2), False, (-1, -1), 0.0, True),
]


def _ids(case):
    api, dtype, d, (sq, sk), (h, hk), causal, window, softcap, alibi = case
    return (
        f"{api}-{str(dtype)[6:]}-d{d}-{sq}x{sk}-h{h}/{hk}"
        + ("-causal" if causal else "")
        + (f"-w{window[0]},{window[1]}" if window != (-1, -1) else "")
        + (f"-cap{softcap:g}" if softcap else "")
        + ("-alibi" if alibi else "")
    )


def _call(api, q, k, v, **kw):
    """Returns (out, lse, grads function) for the api; leaves are the packed tensors."""
    if api == "func":
        leaves = [t.detach().requires_grad_() for t in (q, k, v)]
        out, lse, _ = flash_attn_func(*leaves, return_attn_probs=True, **kw)
        return out, lse, leaves, lambda g: g
    if api == "kvpacked":
        qq = q.detach().requires_grad_()
        kv = torch.stack([k, v], dim=2).detach().requires_grad_()
        out, lse, _ = flash_attn_kvpacked_func(qq, kv, return_attn_probs=True, **kw)
        return out, lse, [qq, kv], lambda g: (g[0], g[1][:, :, 0], g[1][:, :, 1])
    qkv = torch.stack([q, k, v], dim=2).detach().requires_grad_()
    out, lse, _ = flash_attn_qkvpacked_func(qkv, return_attn_probs=True, **kw)
    return out, lse, [qkv], lambda g: (g[0][:, :, 0], g[0][:, :, 1], g[0][:, :, 2])


def _ref_grads(q, k, v, g, upcast, **kw):
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out, lse, _ = attention_ref(*leaves, upcast=upcast, **kw)
    grads = torch.autograd.grad(out, leaves, g.to(out.dtype))
    return out, lse, grads


def check_case(case, device="cpu"):
    """Runs one CASES entry with inputs on device; the reference runs on the CPU."""
    api, dtype, d, (s_q, s_k), (h, h_k), causal, window, softcap, alibi = case
    batch = 2 if s_q * s_k < 200_000 else 1
    q = torch.randn(batch, s_q, h, d, dtype=dtype)
    k = torch.randn(batch, s_k, h_k, d, dtype=dtype)
    v = torch.randn(batch, s_k, h_k, d, dtype=dtype)
    slopes = torch.rand(batch, h, dtype=torch.float32) * 0.3 if alibi else None
    kw = dict(causal=causal, window=window, softcap=softcap, alibi=slopes)
    out, lse, leaves, unpack = _call(
        api,
        *(t.to(device) for t in (q, k, v)),
        causal=causal,
        window_size=window,
        softcap=softcap,
        alibi_slopes=None if slopes is None else slopes.to(device),
    )
    g = torch.randn_like(out, device="cpu")
    ref_out, ref_lse, ref_grads = _ref_grads(q, k, v, g, True, **kw)
    base_out, base_lse, base_grads = _ref_grads(q, k, v, g, False, **kw)
    assert out.dtype == dtype and lse.dtype == torch.float32 and lse.shape == (batch, h, s_q)
    assert out.device == lse.device == q.to(device).device
    assert_rule("out", out, ref_out, base_out, FWD_FACTOR)
    assert_rule("lse", lse, ref_lse, base_lse, FWD_FACTOR)
    grads = unpack(torch.autograd.grad(out, leaves, g.to(device)))
    for name, ours, ref, base in zip(("dq", "dk", "dv"), grads, ref_grads, base_grads):
        assert ours.dtype == dtype
        assert_rule(name, ours, ref, base, BWD_FACTOR)


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_forward_backward(case):
    check_case(case)


def test_softmax_scale_and_fully_masked_rows():
    """An explicit scale is used; rows that see no key give out = 0 and lse = +inf."""
    q, k, v = (torch.randn(1, n, 2, 32) for n in (9, 4, 4))
    out, lse, _ = flash_attn_func(q, k, v, softmax_scale=0.3, causal=True, return_attn_probs=True)
    ref_out, ref_lse, _ = attention_ref(q, k, v, scale=0.3, causal=True)
    assert torch.equal(out[:, :5], torch.zeros_like(out[:, :5]))
    assert torch.isinf(lse[..., :5]).all() and (lse[..., :5] > 0).all()
    torch.testing.assert_close(out.double(), ref_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse[..., 5:].double(), ref_lse[..., 5:], atol=1e-5, rtol=1e-5)


def test_window_size_accepts_tensors():
    """Upstream's tests pass window_size as a 2-element int tensor."""
    q, k, v = (torch.randn(1, 40, 2, 16) for _ in range(3))
    a = flash_attn_func(q, k, v, window_size=torch.tensor([5, 3]))
    b = flash_attn_func(q, k, v, window_size=(5, 3))
    assert torch.equal(a, b)


def test_different_v_head_dim():
    q, k = torch.randn(2, 30, 4, 48), torch.randn(2, 50, 2, 48)
    v = torch.randn(2, 50, 2, 24)
    out = flash_attn_func(q, k, v, causal=True)
    ref, _, _ = attention_ref(q, k, v, causal=True)
    assert out.shape == (2, 30, 4, 24)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)


def test_deterministic_backward_is_bit_reproducible():
    q, k, v = (torch.randn(2, 300, 4, 64, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    g = torch.randn(2, 300, 4, 64, dtype=torch.bfloat16)
    runs = [
        torch.autograd.grad(flash_attn_func(q, k, v, causal=True, deterministic=True), (q, k, v), g) for _ in range(3)
    ]
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert torch.equal(a, b)
