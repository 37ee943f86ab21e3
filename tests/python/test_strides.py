"""Strided inputs (views of larger or transposed buffers, as transformers and the packed variants
pass them) give exactly the results of contiguous copies, forward and backward."""

import torch

from flash_attn import flash_attn_func, flash_attn_varlen_func, flash_attn_with_kvcache


def _grads(fn, *inputs):
    leaves = [t.detach().requires_grad_() for t in inputs]
    out = fn(*leaves)
    g = torch.ones_like(out).uniform_(-1, 1, generator=torch.Generator().manual_seed(3))
    return (out,) + torch.autograd.grad(out, leaves, g)


def test_batched_strided_equals_contiguous():
    base = torch.randn(2, 6, 50, 48, dtype=torch.bfloat16)  # (b, h, s, d): transposed like transformers
    q = base[:, :4].transpose(1, 2)  # (2, 50, 4, 48), non-contiguous
    kv_buf = torch.randn(2, 70, 2, 3, 64, dtype=torch.bfloat16)
    k, v = kv_buf[:, :, 0, :2, :48], kv_buf[:, :, 1, :2, :48]  # head dim sliced: last stride still 1
    assert not q.is_contiguous() and not k.is_contiguous()
    fn = lambda q, k, v: flash_attn_func(q, k, v, causal=True, softcap=3.0)  # noqa: E731
    strided = _grads(fn, q, k, v)
    contiguous = _grads(fn, q.contiguous(), k.contiguous(), v.contiguous())
    for a, b in zip(strided, contiguous):
        assert torch.equal(a, b)


def test_last_dim_strided_inputs_are_copied():
    q = torch.randn(1, 20, 2, 64)[..., ::2]  # stride(-1) == 2
    k = torch.randn(1, 20, 2, 32)
    assert torch.equal(flash_attn_func(q, k, k), flash_attn_func(q.contiguous(), k, k))


def test_varlen_strided_equals_contiguous():
    lens = [20, 31]
    cu = torch.tensor([0] + lens).cumsum(0).to(torch.int32)
    buf = torch.randn(51, 3, 4, 40, dtype=torch.float16)  # packed qkv
    q, k, v = buf[:, 0], buf[:, 1, :2], buf[:, 2, :2]
    fn = lambda q, k, v: flash_attn_varlen_func(q, k, v, cu, cu, 31, 31, causal=True)  # noqa: E731
    for a, b in zip(_grads(fn, q, k, v), _grads(fn, q.contiguous(), k.contiguous(), v.contiguous())):
        assert torch.equal(a, b)


def test_kvcache_strided_cache():
    q = torch.randn(2, 1, 4, 32)
    cache = torch.randn(2, 64, 2, 2, 32)  # k and v interleaved in one buffer
    k_cache, v_cache = cache[:, :, 0], cache[:, :, 1]
    seqlens = torch.tensor([10, 64], dtype=torch.int32)
    a = flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=seqlens)
    b = flash_attn_with_kvcache(q, k_cache.contiguous(), v_cache.contiguous(), cache_seqlens=seqlens)
    assert torch.equal(a, b)
