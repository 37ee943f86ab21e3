"""The raw functions of upstream's compiled extension `flash_attn_2_cuda` (flash-attn 2.8.3),
positional and list-returning, over our engine. Exposed as flash_attn_interface.flash_attn_gpu
and as the top-level module flash_attn_2_cuda (TransformerEngine, xformers and xtuner call these).

Differences from upstream, all widening: any device with a backend (cpu, cuda), fp32 inputs, any
head dim 1..256, any paged-KV page size. `gen` must be None or a torch.Generator whose state is
used for the dropout seed. rng_state is an int64 CPU tensor [seed, offset].
"""

import torch

from . import _engine


def _gen_rng_state(gen, p_dropout, device, batch, nheads):
    return None if gen is None else _engine.draw_rng_state(device, p_dropout, batch, nheads, gen)


def fwd(
    q,
    k,
    v,
    out,
    alibi_slopes,
    p_dropout,
    softmax_scale,
    is_causal,
    window_size_left,
    window_size_right,
    softcap,
    return_softmax,
    gen=None,
):
    """-> [out, softmax_lse, p, rng_state]; q (b, s_q, h, d), k/v (b, s_k, h_k, d)."""
    _engine.expect_ndim("q", q, 4, "(batch, seqlen, nheads, headdim)")
    rng_state = _gen_rng_state(gen, p_dropout, q.device, q.shape[0], q.shape[2])
    return list(
        _engine.fwd(
            q,
            k,
            v,
            out=out,
            alibi_slopes=alibi_slopes,
            dropout_p=p_dropout,
            softmax_scale=softmax_scale,
            causal=is_causal,
            window_left=window_size_left,
            window_right=window_size_right,
            softcap=softcap,
            return_softmax=return_softmax,
            rng_state=rng_state,
        )
    )


def varlen_fwd(
    q,
    k,
    v,
    out,
    cu_seqlens_q,
    cu_seqlens_k,
    seqused_k,
    leftpad_k,
    block_table,
    alibi_slopes,
    max_seqlen_q,
    max_seqlen_k,
    p_dropout,
    softmax_scale,
    zero_tensors,
    is_causal,
    window_size_left,
    window_size_right,
    softcap,
    return_softmax,
    gen=None,
):
    """-> [out, softmax_lse, p, rng_state]; q (total_q, h, d), lse (h, total_q)."""
    _engine.expect_ndim("q", q, 3, "(total_q, nheads, headdim)")
    _engine.expect_ndim("cu_seqlens_q", cu_seqlens_q, 1, "(batch + 1,) int32")
    rng_state = _gen_rng_state(gen, p_dropout, q.device, cu_seqlens_q.numel() - 1, q.shape[1])
    if zero_tensors and out is None:
        out = torch.zeros(q.shape[:-1] + (v.shape[-1],), dtype=q.dtype, device=q.device)
    elif zero_tensors:
        out.zero_()
    result = _engine.fwd(
        q,
        k,
        v,
        out=out,
        cu_seqlens_q=cu_seqlens_q,
        cu_seqlens_k=cu_seqlens_k,
        seqused_k=seqused_k,
        leftpad_k=leftpad_k,
        block_table=block_table,
        alibi_slopes=alibi_slopes,
        max_seqlen_q=max_seqlen_q,
        max_seqlen_k=max_seqlen_k,
        dropout_p=p_dropout,
        softmax_scale=softmax_scale,
        causal=is_causal,
        window_left=window_size_left,
        window_right=window_size_right,
        softcap=softcap,
        return_softmax=return_softmax,
        rng_state=rng_state,
    )
    return list(result)


def _grad_buffers(q, k, v, dq, dk, dv, zero):
    make = torch.zeros_like if zero else (lambda x: _engine.new_output(x.shape, x.dtype, x.device))
    bufs = [make(x) if g is None else g for x, g in ((q, dq), (k, dk), (v, dv))]
    if zero:
        for g, given in zip(bufs, (dq, dk, dv)):
            if given is not None:
                g.zero_()
    return bufs


def bwd(
    dout,
    q,
    k,
    v,
    out,
    softmax_lse,
    dq,
    dk,
    dv,
    alibi_slopes,
    p_dropout,
    softmax_scale,
    is_causal,
    window_size_left,
    window_size_right,
    softcap,
    deterministic,
    gen=None,
    rng_state=None,
):
    """-> [dq, dk, dv, softmax_d]; dq/dk/dv are written in place when given."""
    _engine.expect_ndim("q", q, 4, "(batch, seqlen, nheads, headdim)")
    dq, dk, dv = _grad_buffers(q, k, v, dq, dk, dv, zero=False)
    softmax_d = _engine.bwd(
        dout,
        q,
        k,
        v,
        out,
        softmax_lse,
        dq,
        dk,
        dv,
        alibi_slopes=alibi_slopes,
        dropout_p=p_dropout,
        softmax_scale=softmax_scale,
        causal=is_causal,
        window_left=window_size_left,
        window_right=window_size_right,
        softcap=softcap,
        deterministic=deterministic,
        rng_state=rng_state,
    )
    return [dq, dk, dv, softmax_d]


def varlen_bwd(
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
    alibi_slopes,
    max_seqlen_q,
    max_seqlen_k,
    p_dropout,
    softmax_scale,
    zero_tensors,
    is_causal,
    window_size_left,
    window_size_right,
    softcap,
    deterministic,
    gen=None,
    rng_state=None,
):
    """-> [dq, dk, dv, softmax_d]; varlen layouts, softmax_d (h, total_q + 128 * batch)."""
    _engine.expect_ndim("q", q, 3, "(total_q, nheads, headdim)")
    dq, dk, dv = _grad_buffers(q, k, v, dq, dk, dv, zero=zero_tensors)
    softmax_d = _engine.bwd(
        dout,
        q,
        k,
        v,
        out,
        softmax_lse,
        dq,
        dk,
        dv,
        cu_seqlens_q=cu_seqlens_q,
        cu_seqlens_k=cu_seqlens_k,
        alibi_slopes=alibi_slopes,
        max_seqlen_q=max_seqlen_q,
        max_seqlen_k=max_seqlen_k,
        dropout_p=p_dropout,
        softmax_scale=softmax_scale,
        causal=is_causal,
        window_left=window_size_left,
        window_right=window_size_right,
        softcap=softcap,
        deterministic=deterministic,
        rng_state=rng_state,
    )
    return [dq, dk, dv, softmax_d]


def fwd_kvcache(
    q,
    k_cache,
    v_cache,
    k,
    v,
    seqlens_k,
    rotary_cos,
    rotary_sin,
    cache_batch_idx,
    leftpad_k,
    block_table,
    alibi_slopes,
    out,
    softmax_scale,
    is_causal,
    window_size_left,
    window_size_right,
    softcap,
    is_rotary_interleaved,
    num_splits,
):
    """-> [out, softmax_lse]; writes k/v (after rotary) into the cache in place."""
    out, lse = _engine.kvcache(
        q,
        k_cache,
        v_cache,
        k=k,
        v=v,
        cache_seqlens=seqlens_k,
        rotary_cos=rotary_cos,
        rotary_sin=rotary_sin,
        cache_batch_idx=cache_batch_idx,
        cache_leftpad=leftpad_k,
        block_table=block_table,
        alibi_slopes=alibi_slopes,
        out=out,
        softmax_scale=softmax_scale,
        causal=is_causal,
        window_left=window_size_left,
        window_right=window_size_right,
        softcap=softcap,
        rotary_interleaved=is_rotary_interleaved,
        num_splits=num_splits,
    )
    return [out, lse]


__all__ = ["fwd", "varlen_fwd", "bwd", "varlen_bwd", "fwd_kvcache"]
