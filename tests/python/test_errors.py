"""Every invalid input raises a Python exception whose message names the argument; nothing
kills the interpreter. Library errors are RuntimeErrors (as upstream's), and invalid arguments
are ValueErrors too."""

import pytest
import torch

from flash_attn import (
    _engine,
    _lib,
    flash_attn_func,
    flash_attn_qkvpacked_func,
    flash_attn_varlen_func,
    flash_attn_with_kvcache,
)
from flash_attn.flash_attn_interface import _flash_attn_backward, _flash_attn_forward, flash_attn_gpu

F16 = torch.float16


def qkv(b=1, s=8, h=2, d=16, dtype=F16, h_k=None):
    return (
        torch.randn(b, s, h, d, dtype=dtype),
        torch.randn(b, s, h_k or h, d, dtype=dtype),
        torch.randn(b, s, h_k or h, d, dtype=dtype),
    )


def cu(*lengths, dtype=torch.int32):
    return torch.tensor([0, *lengths], dtype=dtype).cumsum(0).to(dtype)


q, k, v = qkv()
qv, kv_, vv = (t[0] for t in qkv(s=10))

BATCHED = {
    "q dtype float64": (lambda: flash_attn_func(q.double(), k.double(), v.double()), r"\bq\b.*float64"),
    "k dtype differs": (lambda: flash_attn_func(q, k.float(), v), r"\bk\b"),
    "k head dim": (lambda: flash_attn_func(q, k[..., :8], v), r"\bk\b"),
    "nheads_k does not divide": (lambda: flash_attn_func(*qkv(h=4, h_k=3)), r"nheads_k"),
    "head dim > 256": (lambda: flash_attn_func(*qkv(d=300)), r"q\.shape\[-1\]"),
    "q is 5-D": (lambda: flash_attn_func(q[None], k, v), r"\bq\b"),
    "q 3-D": (lambda: flash_attn_func(q[0], k, v), r"\bq\b"),
    "q not a tensor": (lambda: flash_attn_func([1.0], k, v), r"\bq\b"),
    "k on another device": (
        lambda: flash_attn_gpu.fwd(q, k.to("meta"), v, None, None, 0.0, 0.25, False, -1, -1, 0.0, False, None),
        r"\bk\b.*meta",
    ),
    "dropout_p = 1": (lambda: flash_attn_func(q, k, v, dropout_p=1.0), r"dropout_p"),
    "softcap with dropout": (lambda: flash_attn_func(q, k, v, dropout_p=0.1, softcap=5.0), r"softcap"),
    "window_size of 3": (lambda: flash_attn_func(q, k, v, window_size=(1, 2, 3)), r"window_size"),
    "alibi shape": (lambda: flash_attn_func(q, k, v, alibi_slopes=torch.rand(3)), r"alibi_slopes"),
    "alibi dtype": (lambda: flash_attn_func(q, k, v, alibi_slopes=torch.rand(2, dtype=F16)), r"alibi_slopes"),
    "softmax_scale nan": (lambda: flash_attn_func(q, k, v, softmax_scale=float("nan")), r"softmax_scale"),
    "qkv packed wrong": (lambda: flash_attn_qkvpacked_func(q), r"\bqkv\b"),
    "out last dim strided": (
        lambda: flash_attn_gpu.fwd(
            q, k, v, torch.empty(1, 8, 2, 32, dtype=F16)[..., ::2], None, 0.0, 0.25, False, -1, -1, 0.0, False, None
        ),
        r"\bout\b",
    ),
    "gen not a generator": (
        lambda: flash_attn_gpu.fwd(q, k, v, None, None, 0.1, 0.25, False, -1, -1, 0.0, False, 3),
        r"\bgen\b",
    ),
}

VARLEN = {
    "cu_seqlens int64": (
        lambda: flash_attn_varlen_func(qv, kv_, vv, cu(4, 6, dtype=torch.int64), cu(4, 6), 6, 6),
        r"cu_seqlens_q",
    ),
    "cu_seqlens decreasing": (
        lambda: flash_attn_varlen_func(qv, kv_, vv, torch.tensor([0, 6, 4], dtype=torch.int32), cu(4, 6), 6, 6),
        r"cu_seqlens_q",
    ),
    "cu_seqlens past the end": (lambda: flash_attn_varlen_func(qv, kv_, vv, cu(4, 6), cu(4, 9), 6, 9), r"cu_seqlens_k"),
    "max_seqlen too small": (lambda: flash_attn_varlen_func(qv, kv_, vv, cu(4, 6), cu(4, 6), 5, 6), r"max_seqlen_q"),
    "max_seqlen not int": (
        lambda: flash_attn_varlen_func(qv, kv_, vv, cu(4, 6), cu(4, 6), torch.tensor(1.5), 6),
        r"max_seqlen_q",
    ),
    "block_table out of range": (
        lambda: flash_attn_varlen_func(
            qv,
            torch.randn(3, 4, 2, 16, dtype=F16),
            torch.randn(3, 4, 2, 16, dtype=F16),
            cu(4, 6),
            cu(4, 6),
            6,
            6,
            block_table=torch.tensor([[0, 1], [2, 7]], dtype=torch.int32),
        ),
        r"block_table",
    ),
}

cache = torch.randn(2, 32, 2, 16, dtype=F16)
q1 = torch.randn(2, 1, 2, 16, dtype=F16)
new = torch.randn(2, 1, 2, 16, dtype=F16)
seqlens = torch.tensor([3, 5], dtype=torch.int32)
KVCACHE = {
    "k without v": (lambda: flash_attn_with_kvcache(q1, cache, cache.clone(), k=new, cache_seqlens=seqlens), r"\bv\b"),
    "new k without cache_seqlens": (
        lambda: flash_attn_with_kvcache(q1, cache, cache.clone(), k=new, v=new),
        r"cache_seqlens",
    ),
    "cache_seqlens int64": (
        lambda: flash_attn_with_kvcache(q1, cache, cache, cache_seqlens=seqlens.long()),
        r"cache_seqlens",
    ),
    "cache_seqlens too long": (
        lambda: flash_attn_with_kvcache(q1, cache, cache, cache_seqlens=torch.tensor([3, 40], dtype=torch.int32)),
        r"cache_seqlens",
    ),
    "batch_idx with block_table": (
        lambda: flash_attn_with_kvcache(
            q1,
            cache,
            cache,
            cache_seqlens=seqlens,
            block_table=torch.zeros(2, 1, dtype=torch.int32),
            cache_batch_idx=torch.tensor([0, 1], dtype=torch.int32),
        ),
        r"cache_batch_idx",
    ),
    "rotary without new k": (
        lambda: flash_attn_with_kvcache(
            q1,
            cache,
            cache,
            cache_seqlens=seqlens,
            rotary_cos=torch.rand(32, 8, dtype=F16),
            rotary_sin=torch.rand(32, 8, dtype=F16),
        ),
        r"rotary_cos",
    ),
    "num_splits > 128": (lambda: flash_attn_with_kvcache(q1, cache, cache, num_splits=200), r"num_splits"),
    "k_cache 3-D": (lambda: flash_attn_with_kvcache(q1, cache[0], cache[0]), r"cache"),
}


def _check(fn, pattern):
    with pytest.raises((RuntimeError, ValueError, TypeError), match=pattern) as info:
        fn()
    if isinstance(info.value, _lib.InvalidArgumentError):
        assert isinstance(info.value, ValueError) and isinstance(info.value, RuntimeError)


@pytest.mark.parametrize("name", list(BATCHED))
def test_batched_invalid(name):
    _check(*BATCHED[name])


@pytest.mark.parametrize("name", list(VARLEN))
def test_varlen_invalid(name):
    _check(*VARLEN[name])


@pytest.mark.parametrize("name", list(KVCACHE))
def test_kvcache_invalid(name):
    _check(*KVCACHE[name])


def test_backward_invalid_buffers():
    out, lse, _, rng = _flash_attn_forward(q, k, v, 0.0, 0.25, False, -1, -1, 0.0, None, False)
    bad_dq = torch.empty(1, 8, 2, 8, dtype=F16)
    _check(
        lambda: _flash_attn_backward(
            out,
            q,
            k,
            v,
            out,
            lse,
            bad_dq,
            torch.empty_like(k),
            torch.empty_like(v),
            0.0,
            0.25,
            False,
            -1,
            -1,
            0.0,
            None,
            False,
            rng,
        ),
        r"\bdq\b",
    )
    _check(
        lambda: flash_attn_gpu.bwd(
            out, q, k, v, out, lse.to(F16), None, None, None, None, 0.0, 0.25, False, -1, -1, 0.0, False, None, rng
        ),
        r"softmax_lse",
    )


def test_forced_backend_mismatch(monkeypatch):
    monkeypatch.setenv("FLASH_ATTENTION_BACKEND", "cuda")
    _check(lambda: flash_attn_func(q, k, v), r"FLASH_ATTENTION_BACKEND")
    monkeypatch.setenv("FLASH_ATTENTION_BACKEND", "tpu")
    _check(lambda: flash_attn_func(q, k, v), r"FLASH_ATTENTION_BACKEND")
    monkeypatch.setenv("FLASH_ATTENTION_BACKEND", "cpu")
    assert flash_attn_func(q, k, v).shape == q.shape


def test_cuda_backend_unavailable_is_a_clear_error():
    available, why = _lib.backend_available(_lib.BACKEND_CUDA)
    if available:
        pytest.skip("the cuda backend is available here")
    with pytest.raises(_lib.BackendUnavailableError, match=r"cuda backend is not available"):
        _engine.context(torch.device("cuda", 0))


def test_exception_classes():
    assert issubclass(_lib.UnsupportedError, NotImplementedError)
    assert issubclass(_lib.FlashAttnError, RuntimeError)
    for status, cls in _lib._STATUS_EXCEPTIONS.items():
        assert issubclass(cls, _lib.FlashAttnError), status
