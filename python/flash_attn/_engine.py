"""Torch-facing engine: picks the backend for a device, keeps one context per (backend, device),
allocates outputs and workspace with torch, draws the dropout RNG and calls _lib.

Backend choice: a CPU tensor runs on the cpu backend, a CUDA tensor on the cuda backend.
FLASH_ATTENTION_BACKEND=cpu|cuda forces one; tensors on another device then raise instead of
silently running elsewhere. There is no fallback between backends.

Dropout RNG: every forward with dropout takes a fresh (seed, offset) from torch's default
generator of the device, so torch.manual_seed makes it reproducible. rng_state is an int64 CPU
tensor [seed, offset] (a CPU tensor even for CUDA inputs, so the backward reads it without a
device sync); the backward hands the same pair to the library, which regenerates the mask.
"""

import re
import threading

import torch

from . import _lib

_DEVICE_BACKENDS = {"cpu": _lib.BACKEND_CPU, "cuda": _lib.BACKEND_CUDA}

_contexts = {}  # (backend, device index) -> _lib.Context, alive for the process
_device_contexts = {}  # torch.device with an index (or cpu) -> its context, the per-call lookup
_contexts_lock = threading.Lock()


# Testing aid: when True, every output buffer the engine allocates starts as NaN, so a kernel that
# skips an element fails the tests instead of passing on leftover memory.
POISON_OUTPUTS = False


def new_output(shape, dtype, device):
    t = torch.empty(size=shape, dtype=dtype, device=device)  # size=: half the argument parsing
    if POISON_OUTPUTS:
        poison(t)
    return t


def poison(*tensors):
    """NaN into every floating tensor given (POISON_OUTPUTS)."""
    for t in tensors:
        if t is not None and t.is_floating_point():
            t.fill_(float("nan"))


def round_up(x, m):
    return (x + m - 1) // m * m


_forced_backend = _lib.env_reader("FLASH_ATTENTION_BACKEND")  # read on every call, cheaply
_num_threads_env = _lib.env_reader("FLASHATTN_NUM_THREADS")


def backend_for(device):
    """The fa_backend id for tensors on device (honours FLASH_ATTENTION_BACKEND)."""
    forced = (_forced_backend() or "").strip().lower()
    backend = _DEVICE_BACKENDS.get(device.type)
    if forced and forced != "auto":
        if forced not in _DEVICE_BACKENDS:
            raise _lib.InvalidArgumentError(
                f"flash_attn: FLASH_ATTENTION_BACKEND={forced!r} is not one of auto, cpu, cuda"
            )
        if _DEVICE_BACKENDS[forced] != backend:
            raise _lib.InvalidArgumentError(
                f"flash_attn: FLASH_ATTENTION_BACKEND={forced} forces the {forced} backend, but the "
                f"tensors are on {device}; move them to a {forced} device or unset the variable"
            )
        return backend
    if backend is None:
        raise _lib.UnsupportedError(f"flash_attn: tensors on {device} are not supported; use cpu or cuda tensors")
    return backend


def context(device):
    """The cached context for device, created and checked on first use."""
    if not _forced_backend():
        ctx = _device_contexts.get(device)
        if ctx is not None:
            return ctx
    backend = backend_for(device)
    index = 0
    if device.type == "cuda":
        index = torch.cuda.current_device() if device.index is None else device.index
    key = (backend, index)
    ctx = _contexts.get(key)
    if ctx is None:
        with _contexts_lock:
            ctx = _contexts.get(key)
            if ctx is None:
                available, why = _lib.backend_available(backend)
                if not available:
                    name = _lib.backend_name(backend)
                    raise _lib.BackendUnavailableError(
                        f"flash_attn: the {name} backend is not available for tensors on {device}: {why}"
                    )
                ctx = _lib.Context(backend, index)
                _contexts[key] = ctx
    if device.type == "cpu" or device.index is not None:
        _device_contexts[device] = ctx
    return ctx


def cpu_num_threads():
    """FLASHATTN_NUM_THREADS, else torch's intra-op thread count (a fair comparison with torch)."""
    env = _num_threads_env()
    return int(env) if env else torch.get_num_threads()


_WORKSPACE_GRAIN = 2 << 20  # cpu workspaces grow in steps of 2 MiB


def _cpu_workspace(nbytes):
    """A new cpu workspace of at least nbytes, which the context keeps and reuses (Context.run,
    reuse=True). A fresh buffer per call costs a page fault and a page of zeroing for every 4 KiB
    of it (the backward's is tens of MiB at seqlen 4k). Sharing one is safe: ctx.run holds the
    context's lock for the whole call. CUDA keeps one allocation per call, from torch's caching
    allocator (stream-ordered, and private to a CUDA graph during capture)."""
    return torch.empty(round_up(nbytes, _WORKSPACE_GRAIN), dtype=torch.uint8)


def release_workspaces():
    """Frees the cached cpu workspaces (the next call allocates again)."""
    for ctx in list(_contexts.values()):
        with ctx.lock:
            ctx.workspace = None


# The raw cudaStream_t of a device's current stream, as torch's compiler reads it (a CUDA build
# has it): torch.cuda.current_stream() builds a Stream object per call, several times the cost.
_raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)


def _current_stream(device):
    """device's current stream, read every call (CUDA-graph capture runs on a side stream)."""
    index = torch.cuda.current_device() if device.index is None else device.index
    if _raw_stream is not None:
        return _raw_stream(index)
    return torch.cuda.current_stream(index).cuda_stream


_CPU = torch.device("cpu")
_UINT8 = torch.uint8


def _run(op, device, tensors, scalars, opts):
    ctx = context(device)
    if device == _CPU:
        ctx.run(op, tensors, scalars, opts, _cpu_workspace, num_threads=cpu_num_threads(), reuse=True)
    else:
        stream = _current_stream(device)
        alloc = lambda nbytes: torch.empty(nbytes, dtype=_UINT8, device=device)  # noqa: E731
        ctx.run(op, tensors, scalars, opts, alloc, stream=stream)


_STRIDED = torch.strided


def check_tensors(device, names, tensors):
    """Every given tensor must be a torch.Tensor on device (the library cannot tell devices apart).
    names: a tuple of argument names, tensors: the tensors (or None) in the same order."""
    for t in tensors:
        if t is not None and (type(t) is not torch.Tensor or t.device != device or t.layout is not _STRIDED):
            for name, t in zip(names, tensors):
                if t is not None:
                    _check_tensor(device, name, t)
            return  # all are fine (tensor subclasses are)


def _check_tensor(device, name, t):
    """The slow path of check_tensors: says what is wrong with t."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"flash_attn: {name} must be a torch.Tensor (got {type(t).__name__})")
    if t.device != device:
        raise _lib.InvalidArgumentError(
            f"flash_attn: {name} is on {t.device}, but q is on {device}; all tensors must be on one device"
        )
    if t.layout != torch.strided:
        raise _lib.InvalidArgumentError(f"flash_attn: {name} must be a dense (strided) tensor")


def expect_ndim(name, t, ndim, layout):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"flash_attn: {name} must be a torch.Tensor (got {type(t).__name__})")
    if t.dim() != ndim:
        raise _lib.InvalidArgumentError(f"flash_attn: {name} must be {ndim}-D {layout} (got shape {tuple(t.shape)})")


def _as_int(name, value):
    """max_seqlen etc.: Python int, or a 0-d / one-element integer tensor (transformers passes those)."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.is_floating_point():
            raise _lib.InvalidArgumentError(f"flash_attn: {name} must be an int (got a tensor {tuple(value.shape)})")
        return int(value.item())
    return int(value)


# ---------------------------------------------------------------- dropout RNG


def draw_rng_state(device, dropout_p, batch, nheads, generator=None):
    """int64 CPU tensor [seed, offset] for a forward with dropout; zeros when dropout is off.
    generator: None = torch's default generator of device."""
    if dropout_p <= 0.0:
        return torch.zeros(2, dtype=torch.int64)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"flash_attn: gen must be a torch.Generator or None (got {type(generator).__name__})")
    if device.type != "cuda":
        gen = generator if generator is not None else torch.default_generator
        return torch.empty(2, dtype=torch.int64).random_(generator=gen)
    if torch.cuda.is_current_stream_capturing():
        raise _lib.UnsupportedError("flash_attn: dropout inside CUDA graph capture is not supported yet")
    gen = generator
    if gen is None:
        gen = torch.cuda.default_generators[device.index if device.index is not None else torch.cuda.current_device()]
    seed, offset = gen.initial_seed(), gen.get_offset()
    gen.set_offset(offset + round_up(max(batch * nheads, 1), 4))  # reserve, like upstream's philox offset
    to_i64 = lambda x: x - (1 << 64) if x >= (1 << 63) else x  # noqa: E731
    return torch.tensor([to_i64(seed), to_i64(offset)], dtype=torch.int64)


def _rng_opts(rng_state, dropout_p):
    if dropout_p <= 0.0 or rng_state is None:
        return 0, 0
    if rng_state.numel() != 2 or rng_state.dtype != torch.int64:
        raise _lib.InvalidArgumentError(
            "flash_attn: rng_state must be an int64 tensor [seed, offset] "
            f"(got {rng_state.dtype} {tuple(rng_state.shape)})"
        )
    seed, offset = rng_state.tolist()
    return seed, offset


# ---------------------------------------------------------------- operations


def _options(
    d,
    softmax_scale,
    causal,
    window_left,
    window_right,
    softcap,
    dropout_p=0.0,
    rng_state=None,
    deterministic=False,
    num_splits=0,
    rotary_interleaved=True,
):
    """fa_options of one call (make_options' values); softmax_scale None means 1/sqrt(d), d being
    q's head dim."""
    seed, offset = _rng_opts(rng_state, dropout_p) if dropout_p > 0.0 else (0, 0)
    return _lib.make_options(
        d ** (-0.5) if softmax_scale is None else softmax_scale,
        causal,
        window_left,
        window_right,
        softcap,
        dropout_p,
        seed,
        offset,
        deterministic,
        num_splits,
        rotary_interleaved,
    )


_F32 = torch.float32
_FWD_CHECKED = (
    "k",
    "v",
    "out",
    "cu_seqlens_q",
    "cu_seqlens_k",
    "seqused_k",
    "leftpad_k",
    "block_table",
    "alibi_slopes",
)


def fwd(
    q,
    k,
    v,
    *,
    out=None,
    cu_seqlens_q=None,
    cu_seqlens_k=None,
    seqused_k=None,
    leftpad_k=None,
    block_table=None,
    alibi_slopes=None,
    max_seqlen_q=0,
    max_seqlen_k=0,
    dropout_p=0.0,
    softmax_scale=None,
    causal=False,
    window_left=-1,
    window_right=-1,
    softcap=0.0,
    return_softmax=False,
    rng_state=None,
    placeholders=True,
):
    """Batched or varlen forward -> (out, softmax_lse, S_dmask, rng_state).

    Batched: q (b, s_q, h, d), k/v (b, s_k, h_k, d|d_v); lse (b, h, s_q).
    Varlen:  q (total_q, h, d), k/v (total_k, h_k, d|d_v) or paged; lse (h, total_q).
    S_dmask: (b, h, round128(s_q), round128(s_k)) in q's dtype when return_softmax, else (0,):
             normalised probabilities, negated where dropout dropped them.
    placeholders=False: S_dmask and rng_state are None where they carry nothing (no
    return_softmax, no dropout), which saves two allocations on the direct eager path.
    """
    varlen = cu_seqlens_q is not None or cu_seqlens_k is not None
    expect_ndim(
        "q", q, 3 if varlen else 4, "(total_q, nheads, headdim)" if varlen else "(batch, seqlen, nheads, headdim)"
    )
    expect_ndim("v", v, 3 if varlen and block_table is None else 4, "like k")
    expect_ndim("k", k, v.dim(), "like v")
    device = q.device
    checked = (k, v, out, cu_seqlens_q, cu_seqlens_k, seqused_k, leftpad_k, block_table, alibi_slopes)
    check_tensors(device, _FWD_CHECKED, checked)
    scalars = None
    if varlen:
        if cu_seqlens_q is None or cu_seqlens_k is None:
            raise _lib.InvalidArgumentError("flash_attn: varlen needs both cu_seqlens_q and cu_seqlens_k")
        batch = cu_seqlens_q.numel() - 1
        max_seqlen_q = _as_int("max_seqlen_q", max_seqlen_q)
        max_seqlen_k = _as_int("max_seqlen_k", max_seqlen_k)
        total_q, nheads, d = q.shape
        out_shape, lse_shape, s_q = (total_q, nheads, v.shape[-1]), (nheads, total_q), max_seqlen_q
        scalars = {"max_seqlen_q": max_seqlen_q, "max_seqlen_k": max_seqlen_k}
    else:
        batch, s_q, nheads, d = q.shape
        out_shape, lse_shape = (batch, s_q, nheads, v.shape[-1]), (batch, nheads, s_q)
    # torch.empty inlined (new_output): the two allocations are a tenth of a small call
    if out is None:
        out = torch.empty(size=out_shape, dtype=q.dtype, device=device)
        if POISON_OUTPUTS:
            poison(out)
    lse = torch.empty(size=lse_shape, dtype=_F32, device=device)
    if POISON_OUTPUTS:
        poison(lse)
    probs = None
    if return_softmax:
        s_k = max_seqlen_k if varlen else k.shape[1]
        s_dmask = probs = new_output((max(batch, 0), nheads, round_up(s_q, 128), round_up(s_k, 128)), q.dtype, device)
    elif placeholders:
        s_dmask = torch.empty((0,), dtype=q.dtype, device=device)
    else:
        s_dmask = None
    if rng_state is None and (placeholders or dropout_p > 0.0):
        rng_state = draw_rng_state(device, dropout_p, batch, nheads)
    opts = _options(d, softmax_scale, causal, window_left, window_right, softcap, dropout_p, rng_state)
    # fa_fwd_args' tensor fields, in order
    tensors = (q, k, v, cu_seqlens_q, cu_seqlens_k, seqused_k, leftpad_k, block_table, alibi_slopes, out, lse, probs)
    _run("fwd", device, tensors, scalars, opts)
    return out, lse, s_dmask, rng_state


def softmax_d_shape(q, cu_seqlens_q=None):
    """Upstream's softmax_d shapes: batched (b, h, round128(s_q)), varlen (h, total_q + 128 * b)."""
    if cu_seqlens_q is not None:
        return (q.shape[1], q.shape[0] + 128 * (cu_seqlens_q.numel() - 1))
    return (q.shape[0], q.shape[2], round_up(q.shape[1], 128))


_BWD_CHECKED = (
    "dout",
    "k",
    "v",
    "out",
    "softmax_lse",
    "dq",
    "dk",
    "dv",
    "cu_seqlens_q",
    "cu_seqlens_k",
    "alibi_slopes",
)


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
    *,
    cu_seqlens_q=None,
    cu_seqlens_k=None,
    alibi_slopes=None,
    max_seqlen_q=0,
    max_seqlen_k=0,
    dropout_p=0.0,
    softmax_scale=None,
    causal=False,
    window_left=-1,
    window_right=-1,
    softcap=0.0,
    deterministic=False,
    rng_state=None,
    placeholders=True,
):
    """Writes dq, dk, dv in place (any strides, last one 1) and returns softmax_d in upstream's
    rounded shape (the library fills the leading part, the padding is zero); placeholders=False:
    softmax_d has softmax_lse's shape (no padding, not zeroed first)."""
    varlen = cu_seqlens_q is not None or cu_seqlens_k is not None
    expect_ndim(
        "q", q, 3 if varlen else 4, "(total_q, nheads, headdim)" if varlen else "(batch, seqlen, nheads, headdim)"
    )
    device = q.device
    checked = (dout, k, v, out, softmax_lse, dq, dk, dv, cu_seqlens_q, cu_seqlens_k, alibi_slopes)
    check_tensors(device, _BWD_CHECKED, checked)
    if dq is None or dk is None or dv is None:
        name = "dq" if dq is None else "dk" if dk is None else "dv"
        raise _lib.InvalidArgumentError(f"flash_attn: {name} must be a preallocated tensor (got None)")
    scalars = None
    if varlen:
        if cu_seqlens_q is None or cu_seqlens_k is None:
            raise _lib.InvalidArgumentError("flash_attn: varlen needs both cu_seqlens_q and cu_seqlens_k")
        scalars = {
            "max_seqlen_q": _as_int("max_seqlen_q", max_seqlen_q),
            "max_seqlen_k": _as_int("max_seqlen_k", max_seqlen_k),
        }
    if placeholders:
        softmax_d = torch.zeros(softmax_d_shape(q, cu_seqlens_q), dtype=_F32, device=device)
        d_view = softmax_d[:, : q.shape[0]] if varlen else softmax_d[..., : q.shape[1]]
    else:
        softmax_d = d_view = new_output(softmax_lse.shape, _F32, device)
    opts = _options(
        q.shape[-1], softmax_scale, causal, window_left, window_right, softcap, dropout_p, rng_state, deterministic
    )
    # fa_bwd_args' tensor fields, in order
    tensors = (dout, q, k, v, out, softmax_lse, cu_seqlens_q, cu_seqlens_k, alibi_slopes, dq, dk, dv, d_view)
    _run("bwd", device, tensors, scalars, opts)
    return softmax_d


_KVCACHE_CHECKED = (
    "k_cache",
    "v_cache",
    "k",
    "v",
    "cache_seqlens",
    "rotary_cos",
    "rotary_sin",
    "cache_batch_idx",
    "cache_leftpad",
    "block_table",
    "alibi_slopes",
    "out",
)


def kvcache(
    q,
    k_cache,
    v_cache,
    k=None,
    v=None,
    cache_seqlens=None,
    rotary_cos=None,
    rotary_sin=None,
    cache_batch_idx=None,
    cache_leftpad=None,
    block_table=None,
    alibi_slopes=None,
    out=None,
    softmax_scale=None,
    causal=False,
    window_left=-1,
    window_right=-1,
    softcap=0.0,
    rotary_interleaved=True,
    num_splits=0,
):
    """One inference step over a (paged) kv cache; k/v, if given, are written into the cache.
    q (b, s_q, h, d) -> out (b, s_q, h, d_v), softmax_lse (b, h, s_q)."""
    expect_ndim("q", q, 4, "(batch, seqlen, nheads, headdim)")
    expect_ndim("v_cache", v_cache, 4, "(batch_cache, seqlen_cache, nheads_k, headdim)")
    device = q.device
    checked = (
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
        out,
    )
    check_tensors(device, _KVCACHE_CHECKED, checked)
    batch, s_q, nheads, d = q.shape
    if out is None:
        out = torch.empty(size=(batch, s_q, nheads, v_cache.shape[-1]), dtype=q.dtype, device=device)
        if POISON_OUTPUTS:
            poison(out)
    lse = torch.empty(size=(batch, nheads, s_q), dtype=_F32, device=device)
    if POISON_OUTPUTS:
        poison(lse)
    opts = _options(
        d,
        softmax_scale,
        causal,
        window_left,
        window_right,
        softcap,
        num_splits=num_splits,
        rotary_interleaved=rotary_interleaved,
    )
    # fa_kvcache_args' tensor fields, in order
    tensors = (
        q,
        k_cache,
        v_cache,
        k,
        v,
        cache_seqlens,
        cache_batch_idx,
        cache_leftpad,
        block_table,
        rotary_cos,
        rotary_sin,
        alibi_slopes,
        out,
        lse,
    )
    try:
        _run("kvcache", device, tensors, None, opts)
    except _lib.FlashAttnError as e:  # the library says k_new/v_new; the Python arguments are k/v
        message = re.sub(r"\b([kv])_new\b", r"\1", str(e))
        raise type(e)(message, e.status) from None
    return out, lse
