"""Dropout: the drop rate is p (statistically), the output and gradients agree with a reference
that applies the mask returned in S_dmask, the mask is reproducible under torch.manual_seed, and
S_dmask's magnitudes are the attention probabilities."""

import pytest
import torch
from reference import BWD_FACTOR, FWD_FACTOR, assert_rule, attention_ref, dropout_keep, visible

from flash_attn import flash_attn_func, flash_attn_qkvpacked_func, flash_attn_varlen_func

P = 0.17


@pytest.mark.parametrize("causal", [False, True])
def test_drop_rate(causal):
    q, k, v = (torch.randn(2, 256, 4, 32) for _ in range(3))
    _, _, s_dmask = flash_attn_func(q, k, v, dropout_p=P, causal=causal, return_attn_probs=True)
    assert s_dmask.shape == (2, 4, 256, 256)
    vis = visible(256, 256, -1, 0 if causal else -1)
    dropped = torch.signbit(s_dmask)[:, :, vis]
    frac = dropped.float().mean().item()
    assert abs(frac - P) <= 0.01, f"dropped fraction {frac:.4f}, expected {P}"
    assert (s_dmask[:, :, ~vis] == 0).all(), "masked-out positions of S_dmask must be 0"


@pytest.mark.parametrize(
    "dtype,d,shape,h_k,causal",
    [
        (torch.float16, 64, (113, 203), 2, False),
        (torch.bfloat16, 59, (128, 128), 1, True),
        (torch.float32, 128, (1, 239), 4, False),
    ],
)
def test_output_and_gradients_follow_the_mask(dtype, d, shape, h_k, causal):
    s_q, s_k = shape
    q = torch.randn(2, s_q, 4, d, dtype=dtype, requires_grad=True)
    k = torch.randn(2, s_k, h_k, d, dtype=dtype, requires_grad=True)
    v = torch.randn(2, s_k, h_k, d, dtype=dtype, requires_grad=True)
    out, lse, s_dmask = flash_attn_func(q, k, v, dropout_p=P, causal=causal, return_attn_probs=True)
    assert s_dmask.shape == (2, 4, -(-s_q // 128) * 128, -(-s_k // 128) * 128)
    assert (s_dmask[:, :, s_q:] == 0).all() and (s_dmask[:, :, :, s_k:] == 0).all()
    keep = dropout_keep(s_dmask, s_q, s_k)
    g = torch.randn_like(out)
    refs = {}
    for upcast in (True, False):
        leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
        r_out, r_lse, r_probs = attention_ref(*leaves, causal=causal, keep=keep, dropout_p=P, upcast=upcast)
        refs[upcast] = (r_out, r_lse, r_probs, torch.autograd.grad(r_out, leaves, g.to(r_out.dtype)))
    assert_rule("out", out, refs[True][0], refs[False][0], FWD_FACTOR)
    assert_rule("lse", lse, refs[True][1], refs[False][1], FWD_FACTOR)
    assert_rule("attn probs", s_dmask[:, :, :s_q, :s_k].abs(), refs[True][2], refs[False][2], FWD_FACTOR)
    grads = torch.autograd.grad(out, (q, k, v), g)
    for name, ours, ref, base in zip(("dq", "dk", "dv"), grads, refs[True][3], refs[False][3]):
        assert_rule(name, ours, ref, base, BWD_FACTOR)


def test_reproducible_under_manual_seed():
    qkv = torch.randn(1, 64, 3, 2, 32)
    runs = []
    for seed in (1, 1, 2):
        torch.manual_seed(seed)
        runs.append(flash_attn_qkvpacked_func(qkv, dropout_p=0.3, return_attn_probs=True))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][2], runs[1][2])
    assert not torch.equal(torch.signbit(runs[0][2]), torch.signbit(runs[2][2]))
    # two calls in a row draw different masks
    a = flash_attn_qkvpacked_func(qkv, dropout_p=0.3, return_attn_probs=True)[2]
    b = flash_attn_qkvpacked_func(qkv, dropout_p=0.3, return_attn_probs=True)[2]
    assert not torch.equal(torch.signbit(a), torch.signbit(b))


def test_no_dropout_gives_empty_s_dmask():
    q = torch.randn(1, 8, 2, 16)
    _, _, s_dmask = flash_attn_func(q, q, q, return_attn_probs=True)
    assert s_dmask.shape == (0,)


def test_varlen_dropout_follows_the_mask():
    lens = [50, 13, 77]
    cu = torch.tensor([0] + lens).cumsum(0).to(torch.int32)
    q, k, v = (torch.randn(sum(lens), 3, 32, dtype=torch.float16, requires_grad=True) for _ in range(3))
    out, lse, s_dmask = flash_attn_varlen_func(
        q, k, v, cu, cu, 77, 77, dropout_p=P, causal=True, return_attn_probs=True
    )
    assert s_dmask.shape == (3, 3, 128, 128)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), g)
    for i, n in enumerate(lens):
        rows = slice(int(cu[i]), int(cu[i + 1]))
        keep = dropout_keep(s_dmask[i : i + 1], n, n)
        refs = {}
        for upcast in (True, False):
            leaves = [t[rows][None].detach().clone().requires_grad_() for t in (q, k, v)]
            r_out, _, _ = attention_ref(*leaves, causal=True, keep=keep, dropout_p=P, upcast=upcast)
            refs[upcast] = (r_out, torch.autograd.grad(r_out, leaves, g[rows][None].to(r_out.dtype)))
        assert_rule(f"out[{i}]", out[rows][None], refs[True][0], refs[False][0], FWD_FACTOR)
        for name, ours, ref, base in zip(("dq", "dk", "dv"), grads, refs[True][1], refs[False][1]):
            assert_rule(f"{name}[{i}]", ours[rows][None], ref, base, BWD_FACTOR)
