"""flash_attn_with_kvcache against a reference that updates the cache and attends in float64:
new k/v appended in place, rotary (interleaved / GPT-NeoX, partial), paged KV with page sizes
1, 16 and 256, cache_leftpad, cache_batch_idx, GQA, causal/local, ALiBi, softcap, split-KV."""

import pytest
import torch
from reference import assert_rule, attention_ref

from flash_attn import flash_attn_with_kvcache

F16, BF16, F32 = torch.float16, torch.bfloat16, torch.float32
KV_FACTOR = 3.0  # upstream's kvcache tests use 3x (+1e-5)


def rotate(x, cos, sin, positions, interleaved):
    """Independent rotary reference: x (s, h, d), positions (s,) -> rotated x (float64)."""
    rd = cos.shape[1] * 2
    c, s = cos.double()[positions][:, None, :], sin.double()[positions][:, None, :]
    x = x.double()
    if interleaved:
        x1, x2 = x[..., 0:rd:2], x[..., 1:rd:2]
    else:
        x1, x2 = x[..., : rd // 2], x[..., rd // 2 : rd]
    r1, r2 = x1 * c - x2 * s, x1 * s + x2 * c
    rot = torch.stack((r1, r2), -1).flatten(-2) if interleaved else torch.cat((r1, r2), -1)
    return torch.cat((rot, x[..., rd:]), -1)


def kvcache_ref(
    q,
    k_dense,
    v_dense,
    k_new,
    v_new,
    cache_seqlens,
    batch_idx,
    leftpad,
    cos,
    sin,
    interleaved,
    causal,
    window,
    capacity,
    upcast,
    **kw,
):
    """k_dense/v_dense (b_cache, capacity, h_k, d) before the call. Returns (out, lse, k_after,
    v_after) where *_after are the expected caches (in the input dtype)."""
    b, s_q = q.shape[0], q.shape[1]
    slopes = kw.pop("alibi_i", None)
    k_after, v_after = k_dense.clone(), v_dense.clone()
    outs, lses = [], []
    for i in range(b):
        r = int(batch_idx[i]) if batch_idx is not None else i
        cs = int(cache_seqlens[i]) if cache_seqlens is not None else k_dense.shape[1]
        q_i = q[i]
        if k_new is not None:
            s_new = k_new.shape[1]
            k_i = k_new[i]
            if cos is not None:
                k_i = rotate(k_i, cos, sin, torch.arange(cs, cs + s_new), interleaved).to(q.dtype)
            k_after[r, cs : cs + s_new] = k_i
            v_after[r, cs : cs + s_new] = v_new[i]
            end = cs + s_new
        else:
            end = cs
        if cos is not None:
            local = causal or window != (-1, -1)
            pos = torch.arange(cs, cs + s_q) if local else torch.full((s_q,), cs)
            q_i = rotate(q_i, cos, sin, pos, interleaved).to(q.dtype)
        start = int(leftpad[i]) if leftpad is not None else 0
        out, lse, _ = attention_ref(
            q_i[None],
            k_after[r : r + 1, start:end],
            v_after[r : r + 1, start:end],
            causal=causal,
            window=window,
            upcast=upcast,
            max_seqlen_k=capacity,
            alibi=slopes,
            **kw,
        )
        outs.append(out)
        lses.append(lse)
    return torch.cat(outs), torch.cat(lses), k_after, v_after


# (dtype, d, (h, h_k), s_q, s_new, capacity, causal, window, rotary (fraction, interleaved),
#  paged page_size, leftpad, batch_idx, alibi, softcap, num_splits)
CASES = [
    (F16, 64, (4, 2), 3, 3, 128, True, (-1, -1), (1.0, True), None, False, False, False, 0.0, 0),
    (BF16, 128, (2, 2), 1, 1, 200, False, (-1, -1), (0.5, False), None, False, False, False, 0.0, 0),
    (F32, 59, (3, 1), 2, 0, 97, False, (10, 0), None, None, False, False, True, 0.0, 0),
    (F16, 256, (2, 1), 4, 0, 64, False, (-1, -1), None, None, False, False, False, 0.0, 1),
    (F16, 64, (4, 4), 2, 2, 80, True, (-1, -1), None, None, False, True, False, 0.0, 0),
    (BF16, 64, (6, 3), 5, 5, 128, True, (-1, -1), (0.5, True), None, True, False, False, 0.0, 0),
    (F16, 64, (4, 2), 1, 1, None, True, (-1, -1), (1.0, False), 1, False, False, False, 0.0, 0),
    (F16, 64, (4, 2), 4, 4, None, True, (-1, -1), (1.0, True), 16, False, False, False, 0.0, 0),
    (BF16, 128, (2, 2), 2, 2, None, False, (32, 8), None, 256, False, False, True, 0.0, 0),
    (F32, 8, (2, 2), 3, 2, 50, True, (-1, -1), (1.0, True), None, False, False, False, 20.0, 3),
    (F32, 111, (3, 3), 16, 16, 300, True, (-1, -1), None, None, False, False, False, 0.0, 4),
]


def _id(c):
    return (
        f"{str(c[0])[6:]}-d{c[1]}-h{c[2][0]}/{c[2][1]}-q{c[3]}-new{c[4]}"
        + ("-causal" if c[6] else "")
        + (f"-rot{c[8][0]}{'i' if c[8][1] else 'n'}" if c[8] else "")
        + (f"-page{c[9]}" if c[9] else "")
        + ("-leftpad" if c[10] else "")
        + ("-bidx" if c[11] else "")
        + ("-alibi" if c[12] else "")
        + (f"-cap{c[13]:g}" if c[13] else "")
        + (f"-splits{c[14]}" if c[14] else "")
    )


def check_kvcache_case(case, device="cpu"):
    """Runs one CASES entry with inputs on device; the reference runs on the CPU."""
    (
        dtype,
        d,
        (h, h_k),
        s_q,
        s_new,
        capacity,
        causal,
        window,
        rotary,
        page,
        use_leftpad,
        use_bidx,
        alibi,
        softcap,
        num_splits,
    ) = case
    b = 3
    capacity = capacity or 300  # paged: logical capacity per row
    cache_seqlens = torch.randint(0, capacity - s_new + 1, (b,), dtype=torch.int32)
    cache_seqlens[0] = capacity - s_new  # one row filled to the end
    q = torch.randn(b, s_q, h, d, dtype=dtype)
    k_new = torch.randn(b, s_new, h_k, d, dtype=dtype) if s_new else None
    v_new = torch.randn(b, s_new, h_k, d, dtype=dtype) if s_new else None
    b_cache = b + 2 if use_bidx else b
    k_dense = torch.randn(b_cache, capacity, h_k, d, dtype=dtype)
    v_dense = torch.randn(b_cache, capacity, h_k, d, dtype=dtype)
    batch_idx = torch.randperm(b_cache)[:b].to(torch.int32) if use_bidx else None
    leftpad = None
    if use_leftpad:
        leftpad = torch.stack([torch.randint(0, int(x) + 1, ()) for x in cache_seqlens]).to(torch.int32)
    cos = sin = None
    if rotary:
        rd = int(d * rotary[0]) // 2 * 2
        seqlen_ro = (-(-capacity // page) * page if page else capacity) + s_q  # q may run past the cache
        angles = torch.rand(seqlen_ro, rd // 2, dtype=torch.float64) * 6.28
        cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)
    slopes = torch.rand(h) * 0.3 if alibi else None
    k_cache, v_cache, block_table = k_dense.clone(), v_dense.clone(), None
    if page:
        max_blocks = -(-capacity // page)
        num_blocks = b * max_blocks + 2
        block_table = torch.randperm(num_blocks)[: b * max_blocks].reshape(b, max_blocks).to(torch.int32)
        k_cache = torch.randn(num_blocks, page, h_k, d, dtype=dtype)
        v_cache = torch.randn(num_blocks, page, h_k, d, dtype=dtype)
        k_dense = k_cache[block_table.long()].reshape(b, max_blocks * page, h_k, d)[:, :capacity].clone()
        v_dense = v_cache[block_table.long()].reshape(b, max_blocks * page, h_k, d)[:, :capacity].clone()
    kw = dict(softcap=softcap)
    results = {}
    for upcast in (True, False):
        results[upcast] = kvcache_ref(
            q,
            k_dense,
            v_dense,
            k_new,
            v_new,
            cache_seqlens,
            batch_idx,
            leftpad,
            cos,
            sin,
            rotary[1] if rotary else True,
            causal,
            window,
            capacity,
            upcast,
            alibi_i=slopes,
            **kw,
        )
    dev = lambda t: None if t is None else t.to(device)  # noqa: E731
    k_cache, v_cache = dev(k_cache), dev(v_cache)
    out, lse = flash_attn_with_kvcache(
        dev(q),
        k_cache,
        v_cache,
        k=dev(k_new),
        v=dev(v_new),
        rotary_cos=dev(cos),
        rotary_sin=dev(sin),
        cache_seqlens=dev(cache_seqlens),
        cache_batch_idx=dev(batch_idx),
        cache_leftpad=dev(leftpad),
        block_table=dev(block_table),
        causal=causal,
        window_size=window,
        softcap=softcap,
        rotary_interleaved=rotary[1] if rotary else True,
        alibi_slopes=dev(slopes),
        num_splits=num_splits,
        return_softmax_lse=True,
    )
    k_cache, v_cache = k_cache.cpu(), v_cache.cpu()
    assert out.shape == (b, s_q, h, d) and lse.shape == (b, h, s_q)
    assert_rule("out", out, results[True][0], results[False][0], KV_FACTOR)
    assert_rule("lse", lse, results[True][1], results[False][1], KV_FACTOR)
    if page:
        k_after = k_cache[block_table.long()].reshape(b, -1, h_k, d)[:, :capacity]
        v_after = v_cache[block_table.long()].reshape(b, -1, h_k, d)[:, :capacity]
    else:
        k_after, v_after = k_cache, v_cache
    torch.testing.assert_close(k_after, results[True][2], atol=1e-3 if dtype == F32 else 2e-2, rtol=1e-3)
    assert torch.equal(v_after, results[True][3])


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_kvcache(case):
    check_kvcache_case(case)


def test_cache_seqlens_int_and_none():
    q = torch.randn(2, 1, 4, 32)
    k_cache, v_cache = torch.randn(2, 40, 4, 32), torch.randn(2, 40, 4, 32)
    full = flash_attn_with_kvcache(q, k_cache, v_cache)
    as_int = flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=40)
    assert torch.equal(full, as_int)
    ref, _, _ = attention_ref(q, k_cache, v_cache)
    torch.testing.assert_close(full.double(), ref, atol=1e-5, rtol=1e-5)


def test_num_splits_agree():
    q = torch.randn(1, 2, 4, 64, dtype=F16)
    k_cache, v_cache = (torch.randn(1, 1000, 2, 64, dtype=F16) for _ in range(2))
    outs = [flash_attn_with_kvcache(q, k_cache, v_cache, num_splits=n) for n in (0, 1, 2, 7)]
    ref, _, _ = attention_ref(q, k_cache, v_cache)
    base, _, _ = attention_ref(q, k_cache, v_cache, upcast=False)
    for out in outs:
        assert_rule("out", out, ref, base, KV_FACTOR)
