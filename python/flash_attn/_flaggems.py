"""FLASH_ATTENTION_USE_FLAGGEMS=TRUE: the original FlashAttention-Plus switch, kept working.

When the variable is TRUE (case-insensitive; "1" and "yes" too) and FlagGems is importable, the
dense forward of CUDA fp16/bf16 tensors without dropout runs FlagGems' Triton kernel
(flag_gems.ops.attention.flash_attention_forward). Everything else — CPU tensors, fp32, varlen,
kvcache, dropout, backward — runs our kernels; the backward accepts FlagGems' out and lse, whose
lse is the same (batch, nheads, seqlen_q) natural-log logsumexp. When FlagGems cannot be
imported, or a call has to run our kernels instead, a one-time warning says why.

FlagGems is imported without side effects on the host process: sys.argv and
PYTEST_CURRENT_TEST are hidden during the import (FlagGems argparses argv and may call
pytest.main at import), GEMS_VENDOR defaults to nvidia (else it shells out to probe vendors),
and on triton >= 3.6 its libentry launch path is pinned to the 3.5 form.
"""

import os
import sys
import warnings

_HEAD_DIMS = (32, 64, 96, 128, 192, 256)  # what FlagGems' forward accepts; others are zero-padded
_state = {"module": None, "error": None, "tried": False}
_warned = set()


def enabled():
    return os.environ.get("FLASH_ATTENTION_USE_FLAGGEMS", "").strip().lower() in ("true", "1", "yes", "on")


def _warn_once(key, message):
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=4)


def _import_flag_gems():
    if _state["tried"]:
        return _state["module"]
    _state["tried"] = True
    saved_argv = sys.argv
    saved_pytest = os.environ.pop("PYTEST_CURRENT_TEST", None)
    os.environ.setdefault("GEMS_VENDOR", "nvidia")
    try:
        sys.argv = sys.argv[:1]
        import flag_gems  # noqa: F401
        import flag_gems.ops.attention as attention
        import triton

        major, minor = (int(x) for x in triton.__version__.split(".")[:2])
        libentry = sys.modules.get("flag_gems.utils.libentry")
        if libentry is not None and (major, minor) >= (3, 6):
            libentry.minor_version = 5
        _state["module"] = attention
    except Exception as e:  # noqa: BLE001 - any import failure means "not available"
        _state["error"] = f"{type(e).__name__}: {e}"
    finally:
        sys.argv = saved_argv
        if saved_pytest is not None:
            os.environ["PYTEST_CURRENT_TEST"] = saved_pytest
    return _state["module"]


def status():
    """A line for the environment report."""
    if not enabled():
        return "off (set FLASH_ATTENTION_USE_FLAGGEMS=TRUE to route dense CUDA forwards to FlagGems)"
    module = _import_flag_gems()
    return "on, FlagGems imported" if module is not None else f"requested, but FlagGems is unusable: {_state['error']}"


def maybe_forward(
    q, k, v, dropout_p, softmax_scale, causal, window_left, window_right, softcap, alibi_slopes, return_softmax
):
    """(out, lse) from FlagGems when the switch is on and the call qualifies, else None."""
    if not enabled():
        return None
    attention = _import_flag_gems()
    if attention is None:
        _warn_once(
            "import",
            "flash_attn: FLASH_ATTENTION_USE_FLAGGEMS=TRUE, but FlagGems cannot be "
            f"imported ({_state['error']}); running flash_attn's own kernels",
        )
        return None
    import torch

    reason = None
    if q.device.type != "cuda":
        reason = f"tensors on {q.device.type}"
    elif q.dtype not in (torch.float16, torch.bfloat16):
        reason = f"dtype {q.dtype}"
    elif dropout_p > 0 or return_softmax:
        reason = "dropout"
    elif k.shape[-1] != v.shape[-1]:
        reason = "different q/k and v head dims"
    if reason is not None:
        _warn_once(reason, f"flash_attn: FlagGems does not handle {reason}; running flash_attn's own kernels")
        return None
    d = q.shape[-1]
    padded = next((x for x in _HEAD_DIMS if x >= d), None)
    if padded is None:
        return None
    if padded != d:
        pad = lambda t: torch.nn.functional.pad(t, (0, padded - d))  # noqa: E731
        q, k, v = pad(q), pad(k), pad(v)
    result = attention.flash_attention_forward(
        query=q,
        key=k,
        value=v,
        cumulative_sequence_length_q=None,
        cumulative_sequence_length_k=None,
        max_q=q.shape[1],
        max_k=k.shape[1],
        dropout_p=0.0,
        is_causal=causal,
        return_debug_mask=False,
        scale=softmax_scale,
        softcap=softcap,
        window_size_left=None if window_left < 0 else window_left,
        window_size_right=None if window_right < 0 else window_right,
        seqused_k=None,
        alibi_slopes=alibi_slopes,
        disable_splitkv=False,
    )
    out, lse = result[0], result[1]
    return out[..., :d].contiguous(), lse.float()
