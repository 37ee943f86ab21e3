"""The four torch custom ops of flash-attn >= 2.7 (torch.ops.flash_attn.*), registered for every
device, with fake implementations so torch.compile(fullgraph=True) traces through them.

Forward ops return (out, softmax_lse, S_dmask, rng_state); backward ops write dq, dk, dv in place
and return softmax_d. Schemas and names are upstream's, so torch.ops.flash_attn.* callers and
ring-attention libraries (which read `op._init_fn`) keep working.

Eager calls on plain tensors skip the op dispatch (about 20 us a call): flash_attn_interface calls
the *_eager functions below when eager(...) says nothing needs to see the ops. They run the same
engine calls as the ops' implementations, minus the placeholder tensors the schemas require.
"""

from typing import Optional, Tuple

import torch

from . import _engine, _flaggems, _lib
from . import _extension as flash_attn_gpu

_flaggems_switch = _lib.env_reader("FLASH_ATTENTION_USE_FLAGGEMS")


def maybe_contiguous(x):
    return x if x is None or x.stride(-1) == 1 else x.contiguous()


def round_multiple(x, m):
    return (x + m - 1) // m * m


_jit_tracing = getattr(torch._C, "_is_tracing", torch.jit.is_tracing)  # what torch.jit.is_tracing asks


def eager(*tensors):
    """True when the ops may be bypassed: no torch.compile or jit tracing, no torch dispatch mode
    (fake tensors, opcheck, FlopCounterMode, ...), no functorch transform, and plain tensors (not
    FakeTensor or another subclass). Everything else goes through the registered ops."""
    if (
        torch.compiler.is_compiling()
        or _jit_tracing()
        or torch._C._len_torch_dispatch_stack()
        or torch._C._are_functorch_transforms_active()
    ):
        return False
    for t in tensors:
        if t is not None and type(t) is not torch.Tensor:
            return False
    return True


_ops = torch.library


@_ops.custom_op("flash_attn::_flash_attn_forward", mutates_args=(), device_types=None)
def _flash_attn_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    dropout_p: float,
    softmax_scale: float,
    causal: bool,
    window_size_left: int,
    window_size_right: int,
    softcap: float,
    alibi_slopes: Optional[torch.Tensor],
    return_softmax: bool,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return forward_eager(
        q,
        k,
        v,
        dropout_p,
        softmax_scale,
        causal,
        window_size_left,
        window_size_right,
        softcap,
        alibi_slopes,
        return_softmax,
        placeholders=True,
    )


def forward_eager(
    q,
    k,
    v,
    dropout_p,
    softmax_scale,
    causal,
    window_size_left,
    window_size_right,
    softcap,
    alibi_slopes,
    return_softmax,
    placeholders=False,
):
    """_flash_attn_forward's implementation; S_dmask and rng_state are None where they carry
    nothing unless placeholders (see _engine.fwd); softmax_scale None: 1/sqrt(head dim)."""
    q, k, v = maybe_contiguous(q), maybe_contiguous(k), maybe_contiguous(v)
    if _flaggems_switch() is not None:  # set at all (os.environ.get costs ~0.7 us a call)
        gems = _flaggems.maybe_forward(
            q,
            k,
            v,
            dropout_p,
            q.shape[-1] ** (-0.5) if softmax_scale is None else softmax_scale,
            causal,
            window_size_left,
            window_size_right,
            softcap,
            alibi_slopes,
            return_softmax,
        )
        if gems is not None:
            if not placeholders:
                return gems[0], gems[1], None, None
            return gems[0], gems[1], q.new_empty((0,)), torch.zeros(2, dtype=torch.int64)
    return _engine.fwd(
        q,
        k,
        v,
        alibi_slopes=alibi_slopes,
        dropout_p=dropout_p,
        softmax_scale=softmax_scale,
        causal=causal,
        window_left=window_size_left,
        window_right=window_size_right,
        softcap=softcap,
        return_softmax=return_softmax,
        placeholders=placeholders,
    )


def _fake_probs(q, batch, nheads, s_q, s_k, return_softmax):
    if return_softmax:
        return q.new_empty((batch, nheads, round_multiple(s_q, 128), round_multiple(s_k, 128)))
    return q.new_empty((0,))


def _fake_rng_state():
    return torch.empty((2,), dtype=torch.int64, device="cpu")


@_flash_attn_forward.register_fake
def _flash_attn_forward_fake(
    q,
    k,
    v,
    dropout_p,
    softmax_scale,
    causal,
    window_size_left,
    window_size_right,
    softcap,
    alibi_slopes,
    return_softmax,
):
    batch, s_q, nheads, _ = q.shape
    out = q.new_empty(q.shape[:-1] + (v.shape[-1],))
    lse = q.new_empty((batch, nheads, s_q), dtype=torch.float32)
    p = _fake_probs(q, batch, nheads, s_q, k.shape[1], return_softmax)
    return out, lse, p, _fake_rng_state()


@_ops.custom_op("flash_attn::_flash_attn_varlen_forward", mutates_args=(), device_types=None)
def _flash_attn_varlen_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    dropout_p: float,
    softmax_scale: float,
    causal: bool,
    window_size_left: int = -1,
    window_size_right: int = -1,
    softcap: float = 0.0,
    alibi_slopes: Optional[torch.Tensor] = None,
    return_softmax: bool = False,
    block_table: Optional[torch.Tensor] = None,
    leftpad_k: Optional[torch.Tensor] = None,
    seqused_k: Optional[torch.Tensor] = None,
    zero_tensors: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    q, k, v = [maybe_contiguous(x) for x in (q, k, v)]
    out, lse, p, rng_state = flash_attn_gpu.varlen_fwd(
        q,
        k,
        v,
        None,
        cu_seqlens_q,
        cu_seqlens_k,
        seqused_k,
        leftpad_k,
        block_table,
        alibi_slopes,
        max_seqlen_q,
        max_seqlen_k,
        dropout_p,
        softmax_scale,
        zero_tensors,
        causal,
        window_size_left,
        window_size_right,
        softcap,
        return_softmax,
        None,
    )
    return out, lse, p, rng_state


def varlen_forward_eager(
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
    window_size_left,
    window_size_right,
    softcap,
    alibi_slopes,
    return_softmax,
    block_table=None,
):
    """_flash_attn_varlen_forward (zero_tensors False, no leftpad_k / seqused_k) without the op
    and its placeholder outputs."""
    q, k, v = maybe_contiguous(q), maybe_contiguous(k), maybe_contiguous(v)
    _engine.expect_ndim("cu_seqlens_q", cu_seqlens_q, 1, "(batch + 1,) int32")
    return _engine.fwd(
        q,
        k,
        v,
        cu_seqlens_q=cu_seqlens_q,
        cu_seqlens_k=cu_seqlens_k,
        block_table=block_table,
        alibi_slopes=alibi_slopes,
        max_seqlen_q=max_seqlen_q,
        max_seqlen_k=max_seqlen_k,
        dropout_p=dropout_p,
        softmax_scale=softmax_scale,
        causal=causal,
        window_left=window_size_left,
        window_right=window_size_right,
        softcap=softcap,
        return_softmax=return_softmax,
        placeholders=False,
    )


@_flash_attn_varlen_forward.register_fake
def _flash_attn_varlen_forward_fake(
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
    window_size_left=-1,
    window_size_right=-1,
    softcap=0.0,
    alibi_slopes=None,
    return_softmax=False,
    block_table=None,
    leftpad_k=None,
    seqused_k=None,
    zero_tensors=False,
):
    total_q, nheads, _ = q.shape
    batch = cu_seqlens_q.numel() - 1
    out = q.new_empty(q.shape[:-1] + (v.shape[-1],))
    lse = q.new_empty((nheads, total_q), dtype=torch.float32)
    p = _fake_probs(q, batch, nheads, max_seqlen_q, max_seqlen_k, return_softmax)
    return out, lse, p, _fake_rng_state()


@_ops.custom_op("flash_attn::_flash_attn_backward", mutates_args=("dq", "dk", "dv"), device_types=None)
def _flash_attn_backward(
    dout: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    softmax_lse: torch.Tensor,
    dq: Optional[torch.Tensor],
    dk: Optional[torch.Tensor],
    dv: Optional[torch.Tensor],
    dropout_p: float,
    softmax_scale: float,
    causal: bool,
    window_size_left: int,
    window_size_right: int,
    softcap: float,
    alibi_slopes: Optional[torch.Tensor],
    deterministic: bool,
    rng_state: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    dout, q, k, v, out = [maybe_contiguous(x) for x in (dout, q, k, v, out)]
    return flash_attn_gpu.bwd(
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
        dropout_p,
        softmax_scale,
        causal,
        window_size_left,
        window_size_right,
        softcap,
        deterministic,
        None,
        rng_state,
    )[3]


def backward_eager(
    dout,
    q,
    k,
    v,
    out,
    softmax_lse,
    dq,
    dk,
    dv,
    dropout_p,
    softmax_scale,
    causal,
    window_size_left,
    window_size_right,
    softcap,
    alibi_slopes,
    deterministic,
    rng_state=None,
):
    """_flash_attn_backward without the op: dq, dk, dv given, softmax_d not padded."""
    varlen_backward_eager(
        dout,
        q,
        k,
        v,
        out,
        softmax_lse,
        dq,
        dk,
        dv,
        None,
        None,
        0,
        0,
        dropout_p,
        softmax_scale,
        causal,
        window_size_left,
        window_size_right,
        softcap,
        alibi_slopes,
        deterministic,
        rng_state,
    )


def varlen_backward_eager(
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
    max_seqlen_q,
    max_seqlen_k,
    dropout_p,
    softmax_scale,
    causal,
    window_size_left,
    window_size_right,
    softcap,
    alibi_slopes,
    deterministic,
    rng_state=None,
):
    """_flash_attn_varlen_backward without the op (same signature, cu_seqlens None: batched)."""
    dout, q, k, v = maybe_contiguous(dout), maybe_contiguous(q), maybe_contiguous(k), maybe_contiguous(v)
    out = maybe_contiguous(out)
    _engine.bwd(
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
        dropout_p=dropout_p,
        softmax_scale=softmax_scale,
        causal=causal,
        window_left=window_size_left,
        window_right=window_size_right,
        softcap=softcap,
        deterministic=deterministic,
        rng_state=rng_state,
        placeholders=False,
    )


@_flash_attn_backward.register_fake
def _flash_attn_backward_fake(
    dout,
    q,
    k,
    v,
    out,
    softmax_lse,
    dq,
    dk,
    dv,
    dropout_p,
    softmax_scale,
    causal,
    window_size_left,
    window_size_right,
    softcap,
    alibi_slopes,
    deterministic,
    rng_state=None,
):
    batch, s_q, nheads, _ = q.shape
    return q.new_empty((batch, nheads, round_multiple(s_q, 128)), dtype=torch.float32)


@_ops.custom_op("flash_attn::_flash_attn_varlen_backward", mutates_args=("dq", "dk", "dv"), device_types=None)
def _flash_attn_varlen_backward(
    dout: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    softmax_lse: torch.Tensor,
    dq: Optional[torch.Tensor],
    dk: Optional[torch.Tensor],
    dv: Optional[torch.Tensor],
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    dropout_p: float,
    softmax_scale: float,
    causal: bool,
    window_size_left: int,
    window_size_right: int,
    softcap: float,
    alibi_slopes: Optional[torch.Tensor],
    deterministic: bool,
    rng_state: Optional[torch.Tensor] = None,
    zero_tensors: bool = False,
) -> torch.Tensor:
    dout, q, k, v, out = [maybe_contiguous(x) for x in (dout, q, k, v, out)]
    return flash_attn_gpu.varlen_bwd(
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
        dropout_p,
        softmax_scale,
        zero_tensors,
        causal,
        window_size_left,
        window_size_right,
        softcap,
        deterministic,
        None,
        rng_state,
    )[3]


@_flash_attn_varlen_backward.register_fake
def _flash_attn_varlen_backward_fake(
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
    max_seqlen_q,
    max_seqlen_k,
    dropout_p,
    softmax_scale,
    causal,
    window_size_left,
    window_size_right,
    softcap,
    alibi_slopes,
    deterministic,
    rng_state=None,
    zero_tensors=False,
):
    batch = cu_seqlens_q.numel() - 1
    return q.new_empty((q.shape[1], q.shape[0] + 128 * batch), dtype=torch.float32)


_wrapped_flash_attn_forward = torch.ops.flash_attn._flash_attn_forward
_wrapped_flash_attn_varlen_forward = torch.ops.flash_attn._flash_attn_varlen_forward
_wrapped_flash_attn_backward = torch.ops.flash_attn._flash_attn_backward
_wrapped_flash_attn_varlen_backward = torch.ops.flash_attn._flash_attn_varlen_backward
