"""flash-attn 2.8.3's Python interface over libflashattn: same names, signatures, defaults and
return values.

Layers, top to bottom:
  public functions (flash_attn_func, ...)           normalise arguments, call .apply
  autograd Functions (FlashAttnFunc, ...)           save tensors, allocate grads, call the ops
  custom ops torch.ops.flash_attn._flash_attn_*     opaque to torch.compile, with fake impls,
                                                    registered for every device (_custom_ops.py)
  _engine                                           outputs, workspace, RNG, the C library

Widening differences from upstream (never narrowing): CPU tensors run on the cpu backend; fp32
inputs are accepted; any head dim 1..256 runs without padding; paged KV takes any page size.
S_dmask (return_attn_probs with dropout) holds *normalised* probabilities exp(s - lse), negated
where dropout dropped them, in upstream's (b, h, round128(s_q), round128(s_k)) shape; entries
outside the sequences are 0. rng_state is an int64 CPU tensor [seed, offset].
"""

from typing import Optional, Union

import torch

from . import _custom_ops, _engine, _lib
from . import _extension as flash_attn_gpu  # noqa: F401 - upstream's module attribute
from ._custom_ops import (  # noqa: F401 - upstream's module-level names, imported from here by clients
    _flash_attn_backward,
    _flash_attn_forward,
    _flash_attn_varlen_backward,
    _flash_attn_varlen_forward,
    _wrapped_flash_attn_backward,
    _wrapped_flash_attn_forward,
    _wrapped_flash_attn_varlen_backward,
    _wrapped_flash_attn_varlen_forward,
    maybe_contiguous,
    round_multiple,
)

USE_TRITON_ROCM = False


def _get_block_size_n(device, head_dim, is_dropout, is_causal):
    """Upstream's key-block width table (sm80 rules), kept for API compatibility.

    Our S_dmask is already normalised (see the module docstring), so decoding it needs no
    per-block rescaling: the probabilities are S_dmask.abs() and the kept entries are
    ~torch.signbit(S_dmask) (a dropped 0 is -0.0; upstream's `S_dmask >= 0` differs only there,
    where the probability is 0). Upstream's test helper normalize_flash_attn_S must not be
    applied to it."""
    assert head_dim <= 256
    if head_dim <= 32:
        return 128
    if head_dim <= 64:
        return 128 if not is_dropout else 64
    if head_dim <= 96:
        return 64
    if head_dim <= 128:
        return 64 if not is_dropout else 32
    return 64


_NO_WINDOW = (-1, -1)


def _window(window_size):
    """(left, right) ints; elements may be 0-d tensors (upstream's tests pass a tensor)."""
    if window_size is _NO_WINDOW:  # the default argument
        return window_size
    if len(window_size) != 2:
        raise ValueError(f"flash_attn: window_size must be (left, right) (got {window_size!r})")
    return int(window_size[0]), int(window_size[1])


def _require(name, t, ndim=None, packed_axis=None, packed=None, layout=""):
    """Type and packed-shape checks the wrappers need before slicing (the library checks the rest)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"flash_attn: {name} must be a torch.Tensor (got {type(t).__name__})")
    if ndim is not None and (t.dim() != ndim or (packed_axis is not None and t.shape[packed_axis] != packed)):
        raise _lib.InvalidArgumentError(f"flash_attn: {name} must be {layout} (got shape {tuple(t.shape)})")


def _scale(softmax_scale, q):
    return q.shape[-1] ** (-0.5) if softmax_scale is None else softmax_scale


# ---------------------------------------------------------------- autograd


def _needs_grad(is_grad_enabled, *tensors):
    return is_grad_enabled and any(t.requires_grad for t in tensors)


def _save(ctx, tensors, dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes, deterministic, **varlen):
    ctx.save_for_backward(*tensors)
    ctx.dropout_p = dropout_p
    ctx.softmax_scale = softmax_scale
    ctx.causal = causal
    ctx.window_size = window_size
    ctx.softcap = softcap
    ctx.alibi_slopes = alibi_slopes
    ctx.deterministic = deterministic
    for name, value in varlen.items():
        setattr(ctx, name, value)


def _dense_forward(ctx, q, k, v, dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes, return_softmax):
    """ctx None: called by _apply, which found the call eager."""
    eager = ctx is None or _custom_ops.eager(q, k, v, alibi_slopes)
    forward = _custom_ops.forward_eager if eager else _wrapped_flash_attn_forward
    return forward(
        q,
        k,
        v,
        dropout_p,
        softmax_scale,
        causal=causal,
        window_size_left=window_size[0],
        window_size_right=window_size[1],
        softcap=softcap,
        alibi_slopes=alibi_slopes,
        return_softmax=return_softmax and dropout_p > 0,
    )


def _dense_backward(ctx, saved, dout, dq, dk, dv):
    """saved: ctx.saved_tensors (each read of it unpacks every tensor again); dq/dk/dv: buffers
    (possibly views of one packed buffer) written in place."""
    q, k, v, out, softmax_lse, rng_state = saved
    eager = _custom_ops.eager(dout, q, k, v, out, softmax_lse, dq, dk, dv, ctx.alibi_slopes)
    backward = _custom_ops.backward_eager if eager else _wrapped_flash_attn_backward
    backward(
        dout,
        q,
        k,
        v,
        out,
        softmax_lse,
        dq,
        dk,
        dv,
        ctx.dropout_p,
        ctx.softmax_scale,
        ctx.causal,
        ctx.window_size[0],
        ctx.window_size[1],
        ctx.softcap,
        ctx.alibi_slopes,
        ctx.deterministic,
        rng_state=rng_state,
    )


def _varlen_forward(
    ctx,
    q,
    k,
    v,
    cu_seqlens_q,
    cu_seqlens_k,
    max_seqlen_q,
    max_seqlen_k,
    dropout_p,
    softmax_scale,
    causal,
    window_size,
    softcap,
    alibi_slopes,
    return_softmax,
    block_table=None,
):
    eager = ctx is None or _custom_ops.eager(q, k, v, cu_seqlens_q, cu_seqlens_k, alibi_slopes, block_table)
    forward = _custom_ops.varlen_forward_eager if eager else _wrapped_flash_attn_varlen_forward
    return forward(
        q,
        k,
        v,
        cu_seqlens_q,
        cu_seqlens_k,
        max_seqlen_q,
        max_seqlen_k,
        dropout_p,
        softmax_scale,
        causal=causal,
        window_size_left=window_size[0],
        window_size_right=window_size[1],
        softcap=softcap,
        alibi_slopes=alibi_slopes,
        return_softmax=return_softmax and dropout_p > 0,
        block_table=block_table,
    )


def _varlen_backward(ctx, saved, dout, dq, dk, dv):
    """As _dense_backward."""
    q, k, v, out, softmax_lse, cu_seqlens_q, cu_seqlens_k, rng_state = saved
    cu_seqlens_k = cu_seqlens_q if cu_seqlens_k is None else cu_seqlens_k
    tensors = (dout, q, k, v, out, softmax_lse, dq, dk, dv, cu_seqlens_q, cu_seqlens_k, ctx.alibi_slopes)
    eager = _custom_ops.eager(*tensors)
    backward = _custom_ops.varlen_backward_eager if eager else _wrapped_flash_attn_varlen_backward
    backward(
        dout,
        q,
        k,
        v,
        out,
        softmax_lse,
        dq,
        dk,
        dv,
        cu_seqlens_q,
        cu_seqlens_k,
        ctx.max_seqlen_q,
        ctx.max_seqlen_k,
        ctx.dropout_p,
        ctx.softmax_scale,
        ctx.causal,
        ctx.window_size[0],
        ctx.window_size[1],
        ctx.softcap,
        ctx.alibi_slopes,
        ctx.deterministic,
        rng_state=rng_state,
    )


def _distinct(cu_seqlens_q, cu_seqlens_k):
    """None when k shares q's cu_seqlens: Dynamo cannot trace autograd.Function.apply with one
    tensor passed twice (transformers passes the same tensor for both)."""
    return None if cu_seqlens_k is cu_seqlens_q else cu_seqlens_k


def _shared(cu_seqlens_q, cu_seqlens_k):
    return cu_seqlens_q if cu_seqlens_k is None else cu_seqlens_k


def _result(out, softmax_lse, S_dmask, return_softmax):
    if not return_softmax:
        return out
    if S_dmask is None:  # the eager path allocates no placeholder; upstream returns an empty tensor
        S_dmask = out.new_empty((0,))
    return out, softmax_lse, S_dmask


_NONES = (None,) * 16


def _apply(function, tensors, *args):
    """function.apply(*args), or function.forward(None, *args) when the call is eager (see
    _custom_ops.eager; tensors: every tensor argument or None) and autograd would record nothing
    (grad mode off or no tensor requires grad): .apply costs ~10 us. args end with
    is_grad_enabled; forward then saves nothing on its (absent) ctx and takes the eager path."""
    if _custom_ops.eager(*tensors):
        if args[-1]:
            for t in tensors:
                if t is not None and t.requires_grad:
                    return function.apply(*args)
        return function.forward(None, *args[:-1], False)
    return function.apply(*args)


class FlashAttnQKVPackedFunc(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        qkv,
        dropout_p,
        softmax_scale,
        causal,
        window_size,
        softcap,
        alibi_slopes,
        deterministic,
        return_softmax,
        is_grad_enabled,
    ):
        # qkv (b, s, 3, h, d) -> out (b, s, h, d)
        if ctx is not None:  # the eager path (ctx None) leaves the default to the engine
            softmax_scale = _scale(softmax_scale, qkv)
        q, k, v = qkv.unbind(2)  # one call for three views (slicing thrice costs twice as much)
        out, lse, S_dmask, rng_state = _dense_forward(
            ctx, q, k, v, dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes, return_softmax
        )
        if _needs_grad(is_grad_enabled, qkv):
            _save(
                ctx,
                (q, k, v, out, lse, rng_state),
                dropout_p,
                softmax_scale,
                causal,
                window_size,
                softcap,
                alibi_slopes,
                deterministic,
            )
        return _result(out, lse, S_dmask, return_softmax)

    @staticmethod
    def backward(ctx, dout, *args):
        saved = ctx.saved_tensors
        q = saved[0]
        dqkv = _engine.new_output(q.shape[:2] + (3,) + q.shape[2:], q.dtype, q.device)
        _dense_backward(ctx, saved, dout, dqkv[:, :, 0], dqkv[:, :, 1], dqkv[:, :, 2])
        return (dqkv,) + _NONES[:9]


class FlashAttnKVPackedFunc(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        q,
        kv,
        dropout_p,
        softmax_scale,
        causal,
        window_size,
        softcap,
        alibi_slopes,
        deterministic,
        return_softmax,
        is_grad_enabled,
    ):
        # q (b, s_q, h, d), kv (b, s_k, 2, h_k, d) -> out (b, s_q, h, d)
        if ctx is not None:  # the eager path (ctx None) leaves the default to the engine
            softmax_scale = _scale(softmax_scale, q)
        k, v = kv.unbind(2)
        out, lse, S_dmask, rng_state = _dense_forward(
            ctx, q, k, v, dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes, return_softmax
        )
        if _needs_grad(is_grad_enabled, q, kv):
            _save(
                ctx,
                (q, k, v, out, lse, rng_state),
                dropout_p,
                softmax_scale,
                causal,
                window_size,
                softcap,
                alibi_slopes,
                deterministic,
            )
        return _result(out, lse, S_dmask, return_softmax)

    @staticmethod
    def backward(ctx, dout, *args):
        saved = ctx.saved_tensors
        q, k = saved[:2]
        dq = _engine.new_output(q.shape, q.dtype, q.device)
        dkv = _engine.new_output(k.shape[:2] + (2,) + k.shape[2:], k.dtype, k.device)
        _dense_backward(ctx, saved, dout, dq, dkv[:, :, 0], dkv[:, :, 1])
        return (dq, dkv) + _NONES[:9]


class FlashAttnFunc(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        q,
        k,
        v,
        dropout_p,
        softmax_scale,
        causal,
        window_size,
        softcap,
        alibi_slopes,
        deterministic,
        return_softmax,
        is_grad_enabled,
    ):
        # q (b, s_q, h, d), k/v (b, s_k, h_k, d|d_v) -> out (b, s_q, h, d_v)
        if ctx is not None:  # the eager path (ctx None) leaves the default to the engine
            softmax_scale = _scale(softmax_scale, q)
        out, lse, S_dmask, rng_state = _dense_forward(
            ctx, q, k, v, dropout_p, softmax_scale, causal, window_size, softcap, alibi_slopes, return_softmax
        )
        if _needs_grad(is_grad_enabled, q, k, v):
            _save(
                ctx,
                (q, k, v, out, lse, rng_state),
                dropout_p,
                softmax_scale,
                causal,
                window_size,
                softcap,
                alibi_slopes,
                deterministic,
            )
        return _result(out, lse, S_dmask, return_softmax)

    @staticmethod
    def backward(ctx, dout, *args):
        saved = ctx.saved_tensors
        q, k, v = saved[:3]
        device = q.device
        dq = _engine.new_output(q.shape, q.dtype, device)
        dk = _engine.new_output(k.shape, k.dtype, device)
        dv = _engine.new_output(v.shape, v.dtype, device)
        _dense_backward(ctx, saved, dout, dq, dk, dv)
        return (dq, dk, dv) + _NONES[:9]


class FlashAttnVarlenQKVPackedFunc(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        qkv,
        cu_seqlens,
        max_seqlen,
        dropout_p,
        softmax_scale,
        causal,
        window_size,
        softcap,
        alibi_slopes,
        deterministic,
        return_softmax,
        is_grad_enabled,
    ):
        # qkv (total, 3, h, d) -> out (total, h, d)
        if ctx is not None:  # the eager path (ctx None) leaves the default to the engine
            softmax_scale = _scale(softmax_scale, qkv)
        q, k, v = qkv.unbind(1)
        out, lse, S_dmask, rng_state = _varlen_forward(
            ctx,
            q,
            k,
            v,
            cu_seqlens,
            cu_seqlens,
            max_seqlen,
            max_seqlen,
            dropout_p,
            softmax_scale,
            causal,
            window_size,
            softcap,
            alibi_slopes,
            return_softmax,
        )
        if _needs_grad(is_grad_enabled, qkv):
            _save(
                ctx,
                (q, k, v, out, lse, cu_seqlens, None, rng_state),
                dropout_p,
                softmax_scale,
                causal,
                window_size,
                softcap,
                alibi_slopes,
                deterministic,
                max_seqlen_q=max_seqlen,
                max_seqlen_k=max_seqlen,
            )
        return _result(out, lse, S_dmask, return_softmax)

    @staticmethod
    def backward(ctx, dout, *args):
        saved = ctx.saved_tensors
        q = saved[0]
        # zeros: rows past cu_seqlens[-1] get no gradient and must not be garbage (upstream NaN issue)
        dqkv = torch.zeros(q.shape[:1] + (3,) + q.shape[1:], dtype=q.dtype, device=q.device)
        _varlen_backward(ctx, saved, dout, dqkv[:, 0], dqkv[:, 1], dqkv[:, 2])
        return (dqkv,) + _NONES[:11]


class FlashAttnVarlenKVPackedFunc(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        q,
        kv,
        cu_seqlens_q,
        cu_seqlens_k,
        max_seqlen_q,
        max_seqlen_k,
        dropout_p,
        softmax_scale,
        causal,
        window_size,
        softcap,
        alibi_slopes,
        deterministic,
        return_softmax,
        is_grad_enabled,
    ):
        # q (total_q, h, d), kv (total_k, 2, h_k, d) -> out (total_q, h, d)
        if ctx is not None:  # the eager path (ctx None) leaves the default to the engine
            softmax_scale = _scale(softmax_scale, q)
        k, v = kv.unbind(1)
        out, lse, S_dmask, rng_state = _varlen_forward(
            ctx,
            q,
            k,
            v,
            cu_seqlens_q,
            _shared(cu_seqlens_q, cu_seqlens_k),
            max_seqlen_q,
            max_seqlen_k,
            dropout_p,
            softmax_scale,
            causal,
            window_size,
            softcap,
            alibi_slopes,
            return_softmax,
        )
        if _needs_grad(is_grad_enabled, q, kv):
            _save(
                ctx,
                (q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, rng_state),
                dropout_p,
                softmax_scale,
                causal,
                window_size,
                softcap,
                alibi_slopes,
                deterministic,
                max_seqlen_q=max_seqlen_q,
                max_seqlen_k=max_seqlen_k,
            )
        return _result(out, lse, S_dmask, return_softmax)

    @staticmethod
    def backward(ctx, dout, *args):
        saved = ctx.saved_tensors
        q, k = saved[:2]
        dq = torch.zeros_like(q)
        dkv = torch.zeros(k.shape[:1] + (2,) + k.shape[1:], dtype=k.dtype, device=k.device)
        _varlen_backward(ctx, saved, dout, dq, dkv[:, 0], dkv[:, 1])
        return (dq, dkv) + _NONES[:13]


class FlashAttnVarlenFunc(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        q,
        k,
        v,
        cu_seqlens_q,
        cu_seqlens_k,
        max_seqlen_q,
        max_seqlen_k,
        dropout_p,
        softmax_scale,
        causal,
        window_size,
        softcap,
        alibi_slopes,
        deterministic,
        return_softmax,
        block_table,
        is_grad_enabled,
    ):
        # q (total_q, h, d), k/v (total_k, h_k, d|d_v) or paged -> out (total_q, h, d_v)
        if ctx is not None:  # the eager path (ctx None) leaves the default to the engine
            softmax_scale = _scale(softmax_scale, q)
        out, lse, S_dmask, rng_state = _varlen_forward(
            ctx,
            q,
            k,
            v,
            cu_seqlens_q,
            _shared(cu_seqlens_q, cu_seqlens_k),
            max_seqlen_q,
            max_seqlen_k,
            dropout_p,
            softmax_scale,
            causal,
            window_size,
            softcap,
            alibi_slopes,
            return_softmax,
            block_table=block_table,
        )
        if _needs_grad(is_grad_enabled, q, k, v):
            _save(
                ctx,
                (q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, rng_state),
                dropout_p,
                softmax_scale,
                causal,
                window_size,
                softcap,
                alibi_slopes,
                deterministic,
                max_seqlen_q=max_seqlen_q,
                max_seqlen_k=max_seqlen_k,
                paged=block_table is not None,
            )
        return _result(out, lse, S_dmask, return_softmax)

    @staticmethod
    def backward(ctx, dout, *args):
        if ctx.paged:
            raise NotImplementedError(
                "flash_attn: backward through a paged KV cache (block_table) is not supported, as upstream"
            )
        saved = ctx.saved_tensors
        q, k, v = saved[:3]
        dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        _varlen_backward(ctx, saved, dout, dq, dk, dv)
        return (dq, dk, dv) + _NONES[:14]


# ---------------------------------------------------------------- public functions


def flash_attn_qkvpacked_func(
    qkv,
    dropout_p=0.0,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),  # -1 means infinite context window
    softcap=0.0,  # <=0.0 means deactivate
    alibi_slopes=None,
    deterministic=False,
    return_attn_probs=False,
):
    """Attention over a packed qkv: (batch, seqlen, 3, nheads, headdim) -> (batch, seqlen, nheads, headdim).

    Faster than splitting qkv because the backward writes dq, dk, dv into one buffer.
    dropout_p: probability of dropping (use 0.0 in eval). softmax_scale: default 1/sqrt(headdim).
    causal: bottom-right aligned causal mask. window_size (left, right): local attention, query i
    sees keys [i - left, i + right]. softcap: s = softcap * tanh(s / softcap) when > 0.
    alibi_slopes: fp32 (nheads,) or (batch, nheads); bias -slope * |i - j| is added.
    deterministic: bit-reproducible backward. return_attn_probs: also return softmax_lse
    (batch, nheads, seqlen) and S_dmask (see the module docstring; testing only).
    Returns out, or (out, softmax_lse, S_dmask).
    """
    _require("qkv", qkv, 5, 2, 3, "(batch, seqlen, 3, nheads, headdim)")
    return _apply(
        FlashAttnQKVPackedFunc,
        (qkv, alibi_slopes),
        qkv,
        dropout_p,
        softmax_scale,
        causal,
        _window(window_size),
        softcap,
        alibi_slopes,
        deterministic,
        return_attn_probs,
        torch.is_grad_enabled(),
    )


def flash_attn_kvpacked_func(
    q,
    kv,
    dropout_p=0.0,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),  # -1 means infinite context window
    softcap=0.0,  # 0.0 means deactivated
    alibi_slopes=None,
    deterministic=False,
    return_attn_probs=False,
):
    """Attention with packed kv: q (batch, seqlen_q, nheads, headdim), kv (batch, seqlen_k, 2,
    nheads_k, headdim) -> (batch, seqlen_q, nheads, headdim).

    nheads % nheads_k == 0 (MQA/GQA: query head j uses kv head j // (nheads // nheads_k)). With
    seqlen_q != seqlen_k the causal mask is aligned to the bottom right: query i sees key j iff
    j <= i + seqlen_k - seqlen_q. The window is [i + seqlen_k - seqlen_q - left,
    i + seqlen_k - seqlen_q + right]. Other arguments as flash_attn_qkvpacked_func.
    """
    _require("q", q)
    _require("kv", kv, 5, 2, 2, "(batch, seqlen_k, 2, nheads_k, headdim)")
    return _apply(
        FlashAttnKVPackedFunc,
        (q, kv, alibi_slopes),
        q,
        kv,
        dropout_p,
        softmax_scale,
        causal,
        _window(window_size),
        softcap,
        alibi_slopes,
        deterministic,
        return_attn_probs,
        torch.is_grad_enabled(),
    )


def flash_attn_func(
    q,
    k,
    v,
    dropout_p=0.0,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),  # -1 means infinite context window
    softcap=0.0,  # 0.0 means deactivated
    alibi_slopes=None,
    deterministic=False,
    return_attn_probs=False,
):
    """Attention: q (batch, seqlen_q, nheads, headdim), k (batch, seqlen_k, nheads_k, headdim),
    v (batch, seqlen_k, nheads_k, headdim_v) -> out (batch, seqlen_q, nheads, headdim_v).

    fp16, bf16 or fp32 on cpu or cuda; the last dim must be contiguous (other strides are free).
    Masks and arguments as flash_attn_kvpacked_func. Returns out, or (out, softmax_lse, S_dmask)
    with softmax_lse fp32 (batch, nheads, seqlen_q); a row with no visible key gives out = 0 and
    lse = +inf.
    """
    if not (isinstance(q, torch.Tensor) and isinstance(k, torch.Tensor) and isinstance(v, torch.Tensor)):
        _require("q", q), _require("k", k), _require("v", v)
    return _apply(
        FlashAttnFunc,
        (q, k, v, alibi_slopes),
        q,
        k,
        v,
        dropout_p,
        softmax_scale,
        causal,
        _window(window_size),
        softcap,
        alibi_slopes,
        deterministic,
        return_attn_probs,
        torch.is_grad_enabled(),
    )


def flash_attn_varlen_qkvpacked_func(
    qkv,
    cu_seqlens,
    max_seqlen,
    dropout_p=0.0,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),  # -1 means infinite context window
    softcap=0.0,  # 0.0 means deactivated
    alibi_slopes=None,
    deterministic=False,
    return_attn_probs=False,
):
    """Variable-length packed qkv: qkv (total, 3, nheads, headdim), cu_seqlens int32 (batch + 1,)
    cumulative lengths starting at 0, max_seqlen >= every length -> out (total, nheads, headdim).
    softmax_lse is (nheads, total). Other arguments as flash_attn_qkvpacked_func.
    """
    _require("qkv", qkv, 4, 1, 3, "(total, 3, nheads, headdim)")
    return _apply(
        FlashAttnVarlenQKVPackedFunc,
        (qkv, cu_seqlens, alibi_slopes),
        qkv,
        cu_seqlens,
        max_seqlen,
        dropout_p,
        softmax_scale,
        causal,
        _window(window_size),
        softcap,
        alibi_slopes,
        deterministic,
        return_attn_probs,
        torch.is_grad_enabled(),
    )


def flash_attn_varlen_kvpacked_func(
    q,
    kv,
    cu_seqlens_q,
    cu_seqlens_k,
    max_seqlen_q,
    max_seqlen_k,
    dropout_p=0.0,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),  # -1 means infinite context window
    softcap=0.0,  # 0.0 means deactivated
    alibi_slopes=None,
    deterministic=False,
    return_attn_probs=False,
):
    """Variable-length attention with packed kv: q (total_q, nheads, headdim), kv (total_k, 2,
    nheads_k, headdim), cu_seqlens_q/k int32 (batch + 1,) -> out (total_q, nheads, headdim).
    Masks use each sequence's own lengths. Other arguments as flash_attn_kvpacked_func.
    """
    _require("q", q)
    _require("kv", kv, 4, 1, 2, "(total_k, 2, nheads_k, headdim)")
    return _apply(
        FlashAttnVarlenKVPackedFunc,
        (q, kv, cu_seqlens_q, cu_seqlens_k, alibi_slopes),
        q,
        kv,
        cu_seqlens_q,
        _distinct(cu_seqlens_q, cu_seqlens_k),
        max_seqlen_q,
        max_seqlen_k,
        dropout_p,
        softmax_scale,
        causal,
        _window(window_size),
        softcap,
        alibi_slopes,
        deterministic,
        return_attn_probs,
        torch.is_grad_enabled(),
    )


def flash_attn_varlen_func(
    q,
    k,
    v,
    cu_seqlens_q,
    cu_seqlens_k,
    max_seqlen_q,
    max_seqlen_k,
    dropout_p=0.0,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),  # -1 means infinite context window
    softcap=0.0,  # 0.0 means deactivated
    alibi_slopes=None,
    deterministic=False,
    return_attn_probs=False,
    block_table=None,
):
    """Variable-length attention: q (total_q, nheads, headdim), k/v (total_k, nheads_k, headdim),
    cu_seqlens_q/k int32 (batch + 1,), max_seqlen_q/k ints -> out (total_q, nheads, headdim_v),
    softmax_lse (nheads, total_q).

    block_table int32 (batch, max_blocks): k/v are a paged cache (num_blocks, page_size, nheads_k,
    headdim) with any page_size >= 1; forward only. Other arguments as flash_attn_func.
    """
    if not (isinstance(q, torch.Tensor) and isinstance(k, torch.Tensor) and isinstance(v, torch.Tensor)):
        _require("q", q), _require("k", k), _require("v", v)
    return _apply(
        FlashAttnVarlenFunc,
        (q, k, v, cu_seqlens_q, cu_seqlens_k, alibi_slopes, block_table),
        q,
        k,
        v,
        cu_seqlens_q,
        _distinct(cu_seqlens_q, cu_seqlens_k),
        max_seqlen_q,
        max_seqlen_k,
        dropout_p,
        softmax_scale,
        causal,
        _window(window_size),
        softcap,
        alibi_slopes,
        deterministic,
        return_attn_probs,
        block_table,
        torch.is_grad_enabled(),
    )


def flash_attn_with_kvcache(
    q,
    k_cache,
    v_cache,
    k=None,
    v=None,
    rotary_cos=None,
    rotary_sin=None,
    cache_seqlens: Optional[Union[int, torch.Tensor]] = None,
    cache_batch_idx: Optional[torch.Tensor] = None,
    cache_leftpad: Optional[torch.Tensor] = None,
    block_table: Optional[torch.Tensor] = None,
    softmax_scale=None,
    causal=False,
    window_size=(-1, -1),  # -1 means infinite context window
    softcap=0.0,  # 0.0 means deactivated
    rotary_interleaved=True,
    alibi_slopes=None,
    num_splits=0,
    return_softmax_lse=False,
):
    """One inference step over a kv cache (no autograd).

    q (batch, seqlen_q, nheads, headdim); k_cache/v_cache (batch_cache, seqlen_cache, nheads_k,
    headdim) or, with block_table int32 (batch, max_blocks), paged (num_blocks, page_size,
    nheads_k, headdim) with any page_size. k/v (batch, seqlen_new, nheads_k, headdim), optional:
    written in place into the cache at cache_seqlens (after rotary for k). cache_seqlens: int or
    int32 (batch,), the valid tokens per cache row (the caller increments it). rotary_cos/sin
    (seqlen_ro, rotary_dim / 2): rotary on the new k and on q (interleaved or GPT-NeoX halves).
    cache_batch_idx int32 (batch,): cache rows to use. cache_leftpad int32 (batch,): first valid
    cache position. num_splits: split-KV (0 = heuristic). Returns out (batch, seqlen_q, nheads,
    headdim), or (out, softmax_lse (batch, nheads, seqlen_q)).
    """
    if not (isinstance(q, torch.Tensor) and isinstance(k_cache, torch.Tensor) and isinstance(v_cache, torch.Tensor)):
        _require("q", q), _require("k_cache", k_cache), _require("v_cache", v_cache)
    q, k, v = maybe_contiguous(q), maybe_contiguous(k), maybe_contiguous(v)
    if cache_seqlens is not None and isinstance(cache_seqlens, int):
        cache_seqlens = torch.full((q.shape[0],), cache_seqlens, dtype=torch.int32, device=q.device)
    cache_seqlens = maybe_contiguous(cache_seqlens)
    cache_batch_idx = maybe_contiguous(cache_batch_idx)
    block_table = maybe_contiguous(block_table)
    left, right = _window(window_size)
    out, softmax_lse = _engine.kvcache(
        q,
        k_cache,
        v_cache,
        k,
        v,
        cache_seqlens,
        rotary_cos,
        rotary_sin,
        cache_batch_idx,
        cache_leftpad,
        block_table,
        alibi_slopes,
        None,
        softmax_scale,
        causal,
        left,
        right,
        softcap,
        rotary_interleaved,
        num_splits,
    )
    return (out, softmax_lse) if return_softmax_lse else out
