"""Variable-length attention (varlen func, kvpacked, qkvpacked; seqused_k, leftpad_k, paged KV)
against the float64 reference run sequence by sequence."""

import pytest
import torch
from reference import BWD_FACTOR, FWD_FACTOR, assert_rule, attention_ref

from flash_attn import flash_attn_varlen_func, flash_attn_varlen_kvpacked_func, flash_attn_varlen_qkvpacked_func
from flash_attn.flash_attn_interface import _flash_attn_varlen_forward, flash_attn_gpu

F16, BF16, F32 = torch.float16, torch.bfloat16, torch.float32


def cu_seqlens(lengths):
    return torch.tensor([0] + lengths, dtype=torch.int32).cumsum(0, dtype=torch.int32)


def varlen_ref(q, k, v, cu_q, cu_k, max_k, upcast, alibi=None, key_ranges=None, **kw):
    """Reference over packed tensors: out (total_q, h, d_v), lse (h, total_q). key_ranges[i] =
    (start, end) rows of sequence i's keys relative to cu_k[i] (default: all of them)."""
    outs, lses = [], []
    for i in range(len(cu_q) - 1):
        q_i = q[cu_q[i] : cu_q[i + 1]]
        start, end = key_ranges[i] if key_ranges else (0, int(cu_k[i + 1] - cu_k[i]))
        k_i, v_i = k[cu_k[i] + start : cu_k[i] + end], v[cu_k[i] + start : cu_k[i] + end]
        slopes = None if alibi is None else (alibi[i] if alibi.dim() == 2 else alibi)
        out, lse, _ = attention_ref(
            q_i[None], k_i[None], v_i[None], upcast=upcast, alibi=slopes, max_seqlen_k=max_k, **kw
        )
        outs.append(out[0])
        lses.append(lse[0])
    return torch.cat(outs), torch.cat(lses, dim=-1)


# (api, dtype, d, (h, h_k), lengths_q, lengths_k, causal, window, softcap, alibi)
CASES = [
    ("func", F16, 64, (4, 2), [37, 1, 90, 64], [50, 17, 90, 113], True, (-1, -1), 0.0, False),
    ("func", BF16, 111, (3, 3), [20, 55, 7], [20, 55, 7], False, (8, 4), 0.0, True),
    ("func", F32, 8, (2, 1), [1, 1, 1], [239, 5, 77], False, (-1, -1), 20.0, False),
    ("func", F32, 256, (2, 2), [30, 12], [0, 40], True, (-1, -1), 0.0, True),
    ("func", F16, 59, (6, 3), [113, 64], [203, 128], False, (-1, 0), 0.0, False),
    ("kvpacked", BF16, 128, (4, 1), [61, 33, 9], [70, 33, 100], True, (16, -1), 0.0, False),
    ("qkvpacked", F16, 64, (2, 2), [97, 3, 128], None, True, (-1, -1), 0.0, False),
    ("qkvpacked", F32, 59, (3, 3), [40, 41], None, False, (-1, -1), 0.0, True),
]


def _leaves(api, q, k, v):
    if api == "func":
        leaves = [t.detach().requires_grad_() for t in (q, k, v)]
        return leaves, lambda g: g
    if api == "kvpacked":
        leaves = [q.detach().requires_grad_(), torch.stack([k, v], 1).detach().requires_grad_()]
        return leaves, lambda g: (g[0], g[1][:, 0], g[1][:, 1])
    leaves = [torch.stack([q, k, v], 1).detach().requires_grad_()]
    return leaves, lambda g: (g[0][:, 0], g[0][:, 1], g[0][:, 2])


def _run(api, leaves, cu_q, cu_k, max_q, max_k, **kw):
    if api == "func":
        return flash_attn_varlen_func(*leaves, cu_q, cu_k, max_q, max_k, return_attn_probs=True, **kw)
    if api == "kvpacked":
        return flash_attn_varlen_kvpacked_func(*leaves, cu_q, cu_k, max_q, max_k, return_attn_probs=True, **kw)
    return flash_attn_varlen_qkvpacked_func(leaves[0], cu_q, max_q, return_attn_probs=True, **kw)


def check_varlen_case(case, device="cpu"):
    """Runs one CASES entry with inputs on device; the reference runs on the CPU."""
    api, dtype, d, (h, h_k), lens_q, lens_k, causal, window, softcap, alibi = case
    lens_k = lens_q if lens_k is None else lens_k
    cu_q, cu_k = cu_seqlens(lens_q), cu_seqlens(lens_k)
    max_q, max_k = max(lens_q), max(lens_k)
    q = torch.randn(sum(lens_q), h, d, dtype=dtype)
    k = torch.randn(sum(lens_k), h_k, d, dtype=dtype)
    v = torch.randn(sum(lens_k), h_k, d, dtype=dtype)
    slopes = torch.rand(len(lens_q), h) * 0.3 if alibi else None
    leaves, unpack = _leaves(api, *(t.to(device) for t in (q, k, v)))
    out, lse, _ = _run(
        api,
        leaves,
        cu_q.to(device),
        cu_k.to(device),
        max_q,
        max_k,
        causal=causal,
        window_size=window,
        softcap=softcap,
        alibi_slopes=None if slopes is None else slopes.to(device),
    )
    assert lse.shape == (h, sum(lens_q)) and out.device == q.to(device).device
    g = torch.randn_like(out, device="cpu")
    kw = dict(causal=causal, window=window, softcap=softcap, alibi=slopes)
    results = {}
    for upcast in (True, False):
        ref_leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
        ref_out, ref_lse = varlen_ref(*ref_leaves, cu_q, cu_k, max_k, upcast, **kw)
        results[upcast] = (ref_out, ref_lse, torch.autograd.grad(ref_out, ref_leaves, g.to(ref_out.dtype)))
    assert_rule("out", out, results[True][0], results[False][0], FWD_FACTOR)
    assert_rule("lse", lse, results[True][1], results[False][1], FWD_FACTOR)
    grads = unpack(torch.autograd.grad(out, leaves, g.to(device)))
    for name, ours, ref, base in zip(("dq", "dk", "dv"), grads, results[True][2], results[False][2]):
        assert_rule(name, ours, ref, base, BWD_FACTOR)


def _varlen_id(c):
    return f"{c[0]}-{str(c[1])[6:]}-d{c[2]}-h{c[3][0]}/{c[3][1]}-{len(c[4])}seqs"


@pytest.mark.parametrize("case", CASES, ids=_varlen_id)
def test_varlen_forward_backward(case):
    check_varlen_case(case)


def test_varlen_raw_backward_writes_every_row():
    """varlen_bwd into NaN-poisoned buffers (the autograd path zero-fills) gives the same grads."""
    lens = [33, 7, 60]
    cu = cu_seqlens(lens)
    q, k, v = (torch.randn(sum(lens), 4, 32, dtype=F16, requires_grad=True) for _ in range(3))
    out, lse, _ = flash_attn_varlen_func(q, k, v, cu, cu, 60, 60, causal=True, return_attn_probs=True)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), g)
    dq, dk, dv, softmax_d = flash_attn_gpu.varlen_bwd(
        g,
        q.detach(),
        k.detach(),
        v.detach(),
        out.detach(),
        lse,
        None,
        None,
        None,
        cu,
        cu,
        None,
        60,
        60,
        0.0,
        32**-0.5,
        False,
        True,
        -1,
        -1,
        0.0,
        False,
        None,
        None,
    )
    for ours, ref in zip((dq, dk, dv), grads):
        assert torch.equal(ours, ref)
    assert softmax_d.shape == (4, sum(lens) + 128 * len(lens))
    expected_d = (g.float() * out.detach().float()).sum(-1).t()  # rowsum(dout * out), (h, total_q)
    torch.testing.assert_close(softmax_d[:, : sum(lens)], expected_d, atol=2e-3, rtol=2e-3)


@pytest.mark.parametrize("use_seqused,use_leftpad", [(True, False), (False, True), (True, True)])
def test_seqused_and_leftpad(use_seqused, use_leftpad):
    lens_q, lens_k = [5, 9, 1], [40, 30, 64]
    cu_q, cu_k = cu_seqlens(lens_q), cu_seqlens(lens_k)
    q = torch.randn(sum(lens_q), 4, 64, dtype=BF16)
    k, v = (torch.randn(sum(lens_k), 2, 64, dtype=BF16) for _ in range(2))
    used = [31, 30, 10] if use_seqused else lens_k
    pad = [3, 0, 7] if use_leftpad else [0, 0, 0]
    out, lse, _, _ = _flash_attn_varlen_forward(
        q,
        k,
        v,
        cu_q,
        cu_k,
        9,
        64,
        0.0,
        64**-0.5,
        True,
        seqused_k=torch.tensor(used, dtype=torch.int32) if use_seqused else None,
        leftpad_k=torch.tensor(pad, dtype=torch.int32) if use_leftpad else None,
    )
    ranges = list(zip(pad, used))
    ref = [varlen_ref(q, k, v, cu_q, cu_k, 64, upcast, causal=True, key_ranges=ranges) for upcast in (True, False)]
    assert_rule("out", out, ref[0][0], ref[1][0], FWD_FACTOR)
    assert_rule("lse", lse, ref[0][1], ref[1][1], FWD_FACTOR)


@pytest.mark.parametrize("page_size", [1, 16, 256])
def test_paged_kv(page_size):
    lens_q, lens_k = [3, 17, 1], [300, 45, 129]
    cu_q, cu_k = cu_seqlens(lens_q), cu_seqlens(lens_k)
    h, h_k, d = 4, 2, 64
    q = torch.randn(sum(lens_q), h, d, dtype=F16)
    k, v = (torch.randn(sum(lens_k), h_k, d, dtype=F16) for _ in range(2))
    blocks = [-(-n // page_size) for n in lens_k]
    max_blocks = max(blocks)
    num_blocks = sum(blocks) + 3
    perm = torch.randperm(num_blocks)
    k_paged = torch.randn(num_blocks, page_size, h_k, d, dtype=F16)
    v_paged = torch.randn(num_blocks, page_size, h_k, d, dtype=F16)
    block_table = torch.zeros(len(lens_k), max_blocks, dtype=torch.int32)
    used = 0
    for i, n in enumerate(lens_k):
        for b in range(blocks[i]):
            page = int(perm[used])
            used += 1
            block_table[i, b] = page
            rows = slice(b * page_size, min((b + 1) * page_size, n))
            src = slice(int(cu_k[i]) + rows.start, int(cu_k[i]) + rows.stop)
            k_paged[page, : rows.stop - rows.start] = k[src]
            v_paged[page, : rows.stop - rows.start] = v[src]
    out, lse, _ = flash_attn_varlen_func(
        q,
        k_paged,
        v_paged,
        cu_q,
        cu_k,
        max(lens_q),
        max(lens_k),
        causal=True,
        block_table=block_table,
        return_attn_probs=True,
    )
    ref = [varlen_ref(q, k, v, cu_q, cu_k, max(lens_k), upcast, causal=True) for upcast in (True, False)]
    assert_rule("out", out, ref[0][0], ref[1][0], FWD_FACTOR)
    assert_rule("lse", lse, ref[0][1], ref[1][1], FWD_FACTOR)


def test_max_seqlen_as_tensor():
    """transformers' packed path passes max_seqlen as a 0-d int32 tensor."""
    lens = [10, 20]
    cu = cu_seqlens(lens)
    q, k, v = (torch.randn(30, 2, 16) for _ in range(3))
    a = flash_attn_varlen_func(q, k, v, cu, cu, torch.tensor(20, dtype=torch.int32), torch.tensor(20), causal=True)
    b = flash_attn_varlen_func(q, k, v, cu, cu, 20, 20, causal=True)
    assert torch.equal(a, b)


@pytest.mark.parametrize("seed,dtype,d,causal", [(1, F16, 64, True), (2, BF16, 128, False), (3, F32, 59, True)])
def test_random_lengths(seed, dtype, d, causal):
    """Random per-sequence lengths (some 0 or 1), q and k lengths drawn independently."""
    gen = torch.Generator().manual_seed(seed)
    batch = int(torch.randint(1, 7, (), generator=gen))
    lens_q = torch.randint(0, 130, (batch,), generator=gen).tolist()
    lens_k = torch.randint(1, 260, (batch,), generator=gen).tolist()
    lens_q[0] = 1
    check_varlen_case(("func", dtype, d, (4, 2), lens_q, lens_k, causal, (-1, -1), 0.0, False))
