"""The cheap host path: reused args buffers, the eager bypass of the custom ops and of
autograd.Function.apply, and the allocations of one call.

Each context reuses one args struct per op; a call must leave no field of a previous call behind
(an optional tensor given once and then omitted must really be absent). The eager path must give
the same results as the registered ops, which fake tensors, opcheck and torch.compile use."""

import ctypes
import os

import pytest
import torch
from reference import FWD_FACTOR, assert_rule, attention_ref

from flash_attn import _custom_ops, _engine, _lib, flash_attn_func, flash_attn_varlen_func, flash_attn_with_kvcache

F32 = torch.float32


def _qkv(b=2, s_q=5, s_k=7, h=4, h_k=2, d=16, dtype=F32):
    return (
        torch.randn(b, s_q, h, d, dtype=dtype),
        torch.randn(b, s_k, h_k, d, dtype=dtype),
        torch.randn(b, s_k, h_k, d, dtype=dtype),
    )


def _fields(op):
    """The cpu context's reused args struct of op, as (field, data pointer, ndim) rows."""
    call = _engine.context(torch.device("cpu"))._calls[op]
    args = call.args
    return {
        name: (getattr(args, name).data, getattr(args, name).ndim)
        for name, t in type(args)._fields_
        if t is _lib.FaTensor
    }


def test_absent_optional_after_present_fwd():
    q, k, v = _qkv()
    alibi = torch.rand(4, dtype=F32)
    plain = flash_attn_func(q, k, v, causal=True)
    with_alibi = flash_attn_func(q, k, v, causal=True, alibi_slopes=alibi)
    assert _fields("fwd")["alibi_slopes"][1] == 1
    again = flash_attn_func(q, k, v, causal=True)
    assert _fields("fwd")["alibi_slopes"] == (None, 0)  # zeroed, not the previous call's pointer
    assert torch.equal(again, plain)
    assert not torch.allclose(with_alibi, plain)
    for name, ours, slopes in (("plain", again, None), ("alibi", with_alibi, alibi)):
        ref = attention_ref(q, k, v, causal=True, alibi=slopes)[0]
        base = attention_ref(q, k, v, causal=True, alibi=slopes, upcast=False)[0]
        assert_rule(name, ours, ref, base, FWD_FACTOR)


def test_absent_optionals_after_present_kvcache():
    b, s_cache, h, d = 2, 12, 4, 16
    q = torch.randn(b, 1, h, d)
    k_cache, v_cache = torch.randn(b + 1, s_cache, h, d), torch.randn(b + 1, s_cache, h, d)
    seqlens = torch.tensor([5, 9], dtype=torch.int32)
    plain = flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=seqlens)
    cos, sin = torch.rand(s_cache, d // 2), torch.rand(s_cache, d // 2)
    kc, vc = k_cache.clone(), v_cache.clone()
    busy = flash_attn_with_kvcache(
        q,
        kc,
        vc,
        torch.randn(b, 1, h, d),
        torch.randn(b, 1, h, d),
        rotary_cos=cos,
        rotary_sin=sin,
        cache_seqlens=seqlens,
        cache_batch_idx=torch.tensor([2, 0], dtype=torch.int32),
        cache_leftpad=torch.tensor([1, 0], dtype=torch.int32),
        alibi_slopes=torch.rand(h),
    )
    assert not torch.allclose(busy, plain)
    again = flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=seqlens)
    fields = _fields("kvcache")
    for name in ("k_new", "v_new", "rotary_cos", "rotary_sin", "cache_batch_idx", "cache_leftpad", "alibi_slopes"):
        assert fields[name] == (None, 0), name
    assert torch.equal(again, plain)


def test_absent_optionals_after_present_varlen_and_scalars():
    """Varlen then batched: max_seqlen and cu_seqlens of the varlen call must not survive."""
    q, k, v = _qkv(b=1, s_q=6, s_k=6)
    batched = flash_attn_func(q, k, v)
    cu = torch.tensor([0, 2, 6], dtype=torch.int32)
    varlen = flash_attn_varlen_func(q[0], k[0], v[0], cu, cu, 4, 4)
    assert not torch.allclose(varlen, batched[0])
    again = flash_attn_func(q, k, v)
    call = _engine.context(torch.device("cpu"))._calls["fwd"]
    assert call.args.max_seqlen_q == 0 and call.args.max_seqlen_k == 0
    assert _fields("fwd")["cu_seqlens_q"] == (None, 0)
    assert torch.equal(again, batched)


def test_packed_fields_match_ctypes():
    """pack_tensor writes what the ctypes fields say, for every rank and a zero-element tensor."""
    for t in (
        torch.arange(3.0),
        torch.zeros(2, 3)[:, 1:],
        torch.zeros(2, 3, 4).transpose(0, 2),
        torch.zeros(1, 2, 3, 4),
    ):
        ft = _lib.to_fa_tensor("x", t)
        assert ft.data == t.data_ptr() and ft.dtype == 0 and ft.ndim == t.dim()
        assert list(ft.shape) == list(t.shape) + [0] * (4 - t.dim())
        assert list(ft.stride) == list(t.stride()) + [0] * (4 - t.dim())
    empty = _lib.to_fa_tensor("x", torch.empty(0, 4, dtype=torch.bfloat16))
    assert empty.data == ctypes.addressof(_lib._EMPTY) and empty.dtype == 2 and list(empty.shape) == [0, 4, 0, 0]
    with pytest.raises(_lib.InvalidArgumentError, match="x has dtype torch.uint8"):
        _lib.to_fa_tensor("x", torch.zeros(2, dtype=torch.uint8))
    with pytest.raises(_lib.InvalidArgumentError, match="x must have 1..4 dimensions"):
        _lib.to_fa_tensor("x", torch.zeros(()))


def test_fill_writes_what_ctypes_says_on_every_path():
    """The one-pack fill (a format per rank pattern) and its checked path (a dtype seen first,
    zero elements) write each tensor field as to_fa_tensor does, and zeros where None."""
    call = _engine.context(torch.device("cpu"))._calls["fwd"]
    q = torch.randn(2, 3, 4, 8)
    varlen_q = torch.randn(5, 4, 8)[:, :, 1:7]
    empty = torch.empty(0, 4, dtype=torch.bfloat16)
    cu = torch.tensor([0, 5], dtype=torch.int32)
    options = _lib.make_options()
    cases = (
        (q, q, q) + (None,) * 9,
        (varlen_q, varlen_q, varlen_q, cu, cu) + (None,) * 7,
        (q, q, q) + (None,) * 6 + (empty, None, torch.zeros(3, dtype=torch.int64)),
        (q,) + (None,) * 11,
    )
    for attempt in range(2):
        for tensors in cases:
            call.buffer[:] = b"\xff" * len(call.buffer)  # garbage that every field must overwrite
            call.fill(tensors, {"max_seqlen_q": 5}, options)
            for name, t in zip(call.tensor_fields, tensors):
                assert bytes(getattr(call.args, name)) == bytes(_lib.to_fa_tensor(name, t)), name
            assert call.args.max_seqlen_q == 5 and call.args.max_seqlen_k == 0
        if attempt == 0:
            formats = dict(call.packers)
    assert call.packers == formats  # one format per rank pattern, made once
    with pytest.raises(_lib.InvalidArgumentError, match="alibi_slopes has dtype torch.uint8"):
        call.fill((q, q, q) + (None,) * 5 + (torch.zeros(4, dtype=torch.uint8),) + (None,) * 3, None, options)


def test_env_reader_follows_every_change(monkeypatch):
    """Settings are read on every call (cheaply): a change takes effect at the next call."""
    read = _lib.env_reader("FLASHATTN_TEST_SETTING")
    monkeypatch.delenv("FLASHATTN_TEST_SETTING", raising=False)
    assert read() is None
    for value in ("1", "cpu", "cpu", "", "ünï"):
        monkeypatch.setenv("FLASHATTN_TEST_SETTING", value)
        assert read() == value
    monkeypatch.delenv("FLASHATTN_TEST_SETTING")
    assert read() is None
    monkeypatch.setattr(os, "environ", {"FLASHATTN_TEST_SETTING": "replaced"})
    assert read() == "replaced"


def test_workspace_asked_for_only_when_too_small(monkeypatch):
    """The cpu context runs with its kept workspace and asks the library for the size only when
    that is too small (then grows it); a context without one (cuda) asks first once an op has
    needed one."""
    ctx = _engine.context(torch.device("cpu"))
    q, k, v = _qkv(b=1, s_q=64, s_k=64, h=2, h_k=2, d=32)
    expected = flash_attn_func(q, k, v, causal=True)
    call = ctx._calls["fwd"]
    sizes = []
    real = call.workspace_size
    monkeypatch.setattr(call, "workspace_size", lambda *a: sizes.append(1) or real(*a))
    _engine.release_workspaces()
    assert torch.equal(flash_attn_func(q, k, v, causal=True), expected)
    assert len(sizes) == 1 and ctx.workspace is not None
    assert torch.equal(flash_attn_func(q, k, v, causal=True), expected)
    assert len(sizes) == 1  # the kept workspace fits: one library call
    out, lse = torch.empty_like(q), torch.empty(1, 2, 64)
    tensors = (q, k, v) + (None,) * 6 + (out, lse, None)
    allocated = []

    def alloc(nbytes):
        allocated.append(nbytes)
        return torch.empty(nbytes, dtype=torch.uint8)

    options = _lib.make_options(32**-0.5, True)
    for _ in range(2):  # without a kept workspace: run, too small, size, run; then size first
        assert ctx.run("fwd", tensors, None, options, alloc) is not None
        assert torch.equal(out, expected) and call.sized
    assert len(sizes) == 3 and len(allocated) == 2
    call.sized = False


def test_options_packed_like_ctypes():
    values = _lib.make_options(0.25, True, 3, 2**40, -1.5, 0.1, -1, 7, True, -2, False)
    ctx = _engine.context(torch.device("cpu"))
    call = ctx._calls["fwd"]
    call.fill((None,) * len(call.tensor_fields), None, values)
    expected = _lib.FaOptions(*values)
    for name, _ in _lib.FaOptions._fields_:
        assert getattr(call.opts, name) == getattr(expected, name), name
    assert call.opts.window_right == 2**31 - 1 and call.opts.rng_seed == 2**64 - 1


def test_eager_path_matches_ops():
    q, k, v = (t.requires_grad_() for t in _qkv())
    out, lse, _ = flash_attn_func(q, k, v, causal=True, return_attn_probs=True)
    out.sum().backward()
    grads = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    op_out, op_lse, _, _ = torch.ops.flash_attn._flash_attn_forward(
        q.detach(), k.detach(), v.detach(), 0.0, q.shape[-1] ** -0.5, True, -1, -1, 0.0, None, False
    )
    assert torch.equal(out.detach(), op_out) and torch.equal(lse, op_lse)
    with pytest.MonkeyPatch.context() as mp:  # the same autograd path through the ops
        mp.setattr(_custom_ops, "eager", lambda *tensors: False)
        out2 = flash_attn_func(q, k, v, causal=True)
        out2.sum().backward()
    assert torch.equal(out2.detach(), out.detach())
    for g, t in zip(grads, (q, k, v)):
        assert torch.equal(g, t.grad)


def test_no_grad_call_skips_autograd_but_returns_upstreams_types():
    q, k, v = _qkv()
    out, lse, s_dmask = flash_attn_func(q, k, v, return_attn_probs=True)
    assert out.grad_fn is None and s_dmask.shape == (0,) and lse.shape == (2, 4, 5)
    q.requires_grad_()
    assert flash_attn_func(q, k, v).grad_fn is not None
    with torch.no_grad():
        assert flash_attn_func(q, k, v).grad_fn is None


def test_fake_tensors_take_the_ops():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        q, k, v = (mode.from_tensor(t) for t in _qkv(d=40))
        assert not _custom_ops.eager(q, k, v)
        out = flash_attn_func(q, k, v)
    assert out.shape == (2, 5, 4, 40)


def _count_allocations(monkeypatch):
    counts = {}
    for name in ("empty", "zeros", "full", "tensor", "empty_like", "zeros_like"):
        real = getattr(torch, name)

        def counted(*args, _real=real, _name=name, **kwargs):
            counts[_name] = counts.get(_name, 0) + 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(torch, name, counted)
    return counts


def test_allocations_per_call(monkeypatch):
    """An inference call allocates out and lse and nothing else (the cpu workspace is reused)."""
    q, k, v = _qkv(b=1, s_q=1, s_k=9, h=8, h_k=8, d=64)
    seqlens = torch.tensor([8], dtype=torch.int32)
    flash_attn_func(q, k, v)
    flash_attn_with_kvcache(q, k, v, cache_seqlens=seqlens)  # warm: workspace, contexts
    counts = _count_allocations(monkeypatch)
    flash_attn_func(q, k, v)
    assert counts == {"empty": 2}
    counts.clear()
    flash_attn_with_kvcache(q, k, v, cache_seqlens=seqlens)
    assert counts == {"empty": 2}


def test_stream_passed_when_it_changes(monkeypatch):
    """The cuda path reads the current stream every call; the library hears of it only on a change
    (the context's stream is nobody else's to change). Checked on the cpu context, which ignores it."""
    ctx = _engine.context(torch.device("cpu"))
    calls = []
    real = _lib._lib.fa_context_set_stream
    monkeypatch.setattr(_lib._lib, "fa_context_set_stream", lambda h, s: calls.append(s) or real(h, s))
    for stream in (0, 0, 0x1234, 0x1234, 0, None):
        ctx.set_stream(stream)
    assert calls == [0, 0x1234, 0, None]
    seen = []
    monkeypatch.setattr(_engine, "_raw_stream", lambda index: seen.append(index) or 0x5678)
    assert _engine._current_stream(torch.device("cuda", 1)) == 0x5678 and seen == [1]
