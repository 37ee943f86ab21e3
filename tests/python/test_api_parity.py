"""Signature parity with flash-attn 2.8.3: every public name exists with the same parameters,
order and defaults (frozen below from upstream's v2.8.3 sources), plus the module-level names
and raw extension functions that clients import."""

import ast
import importlib
import inspect

import pytest
import torch

import flash_attn

# Frozen from Dao-AILab/flash-attention tag v2.8.3 (flash_attn/flash_attn_interface.py,
# bert_padding.py, layers/rotary.py): parameter names in order, "=default" where there is one.
UPSTREAM_2_8_3 = {
    "flash_attn.flash_attn_interface": {
        "maybe_contiguous": ("x",),
        "_get_block_size_n": (
            "device",
            "head_dim",
            "is_dropout",
            "is_causal",
        ),
        "round_multiple": (
            "x",
            "m",
        ),
        "_flash_attn_forward": (
            "q",
            "k",
            "v",
            "dropout_p",
            "softmax_scale",
            "causal",
            "window_size_left",
            "window_size_right",
            "softcap",
            "alibi_slopes",
            "return_softmax",
        ),
        "_flash_attn_varlen_forward": (
            "q",
            "k",
            "v",
            "cu_seqlens_q",
            "cu_seqlens_k",
            "max_seqlen_q",
            "max_seqlen_k",
            "dropout_p",
            "softmax_scale",
            "causal",
            "window_size_left=-1",
            "window_size_right=-1",
            "softcap=0.0",
            "alibi_slopes=None",
            "return_softmax=False",
            "block_table=None",
            "leftpad_k=None",
            "seqused_k=None",
            "zero_tensors=False",
        ),
        "_flash_attn_backward": (
            "dout",
            "q",
            "k",
            "v",
            "out",
            "softmax_lse",
            "dq",
            "dk",
            "dv",
            "dropout_p",
            "softmax_scale",
            "causal",
            "window_size_left",
            "window_size_right",
            "softcap",
            "alibi_slopes",
            "deterministic",
            "rng_state=None",
        ),
        "_flash_attn_varlen_backward": (
            "dout",
            "q",
            "k",
            "v",
            "out",
            "softmax_lse",
            "dq",
            "dk",
            "dv",
            "cu_seqlens_q",
            "cu_seqlens_k",
            "max_seqlen_q",
            "max_seqlen_k",
            "dropout_p",
            "softmax_scale",
            "causal",
            "window_size_left",
            "window_size_right",
            "softcap",
            "alibi_slopes",
            "deterministic",
            "rng_state=None",
            "zero_tensors=False",
        ),
        "flash_attn_qkvpacked_func": (
            "qkv",
            "dropout_p=0.0",
            "softmax_scale=None",
            "causal=False",
            "window_size=(-1, -1)",
            "softcap=0.0",
            "alibi_slopes=None",
            "deterministic=False",
            "return_attn_probs=False",
        ),
        "flash_attn_kvpacked_func": (
            "q",
            "kv",
            "dropout_p=0.0",
            "softmax_scale=None",
            "causal=False",
            "window_size=(-1, -1)",
            "softcap=0.0",
            "alibi_slopes=None",
            "deterministic=False",
            "return_attn_probs=False",
        ),
        "flash_attn_func": (
            "q",
            "k",
            "v",
            "dropout_p=0.0",
            "softmax_scale=None",
            "causal=False",
            "window_size=(-1, -1)",
            "softcap=0.0",
            "alibi_slopes=None",
            "deterministic=False",
            "return_attn_probs=False",
        ),
        "flash_attn_varlen_qkvpacked_func": (
            "qkv",
            "cu_seqlens",
            "max_seqlen",
            "dropout_p=0.0",
            "softmax_scale=None",
            "causal=False",
            "window_size=(-1, -1)",
            "softcap=0.0",
            "alibi_slopes=None",
            "deterministic=False",
            "return_attn_probs=False",
        ),
        "flash_attn_varlen_kvpacked_func": (
            "q",
            "kv",
            "cu_seqlens_q",
            "cu_seqlens_k",
            "max_seqlen_q",
            "max_seqlen_k",
            "dropout_p=0.0",
            "softmax_scale=None",
            "causal=False",
            "window_size=(-1, -1)",
            "softcap=0.0",
            "alibi_slopes=None",
            "deterministic=False",
            "return_attn_probs=False",
        ),
        "flash_attn_varlen_func": (
            "q",
            "k",
            "v",
            "cu_seqlens_q",
            "cu_seqlens_k",
            "max_seqlen_q",
            "max_seqlen_k",
            "dropout_p=0.0",
            "softmax_scale=None",
            "causal=False",
            "window_size=(-1, -1)",
            "softcap=0.0",
            "alibi_slopes=None",
            "deterministic=False",
            "return_attn_probs=False",
            "block_table=None",
        ),
        "flash_attn_with_kvcache": (
            "q",
            "k_cache",
            "v_cache",
            "k=None",
            "v=None",
            "rotary_cos=None",
            "rotary_sin=None",
            "cache_seqlens=None",
            "cache_batch_idx=None",
            "cache_leftpad=None",
            "block_table=None",
            "softmax_scale=None",
            "causal=False",
            "window_size=(-1, -1)",
            "softcap=0.0",
            "rotary_interleaved=True",
            "alibi_slopes=None",
            "num_splits=0",
            "return_softmax_lse=False",
        ),
    },
    "flash_attn.bert_padding": {
        "unpad_input": (
            "hidden_states",
            "attention_mask",
            "unused_mask=None",
        ),
        "unpad_input_for_concatenated_sequences": (
            "hidden_states",
            "attention_mask_in_length",
        ),
        "pad_input": (
            "hidden_states",
            "indices",
            "batch",
            "seqlen",
        ),
    },
    "flash_attn.layers.rotary": {
        "apply_rotary_emb": (
            "x",
            "cos",
            "sin",
            "interleaved=False",
            "inplace=False",
            "seqlen_offsets=0",
            "cu_seqlens=None",
            "max_seqlen=None",
        ),
        "apply_rotary_emb_qkv_": (
            "qkv",
            "cos",
            "sin",
            "cos_k=None",
            "sin_k=None",
            "interleaved=False",
            "seqlen_offsets=0",
            "num_heads_q=None",
        ),
        "apply_rotary_emb_kv_": (
            "kv",
            "cos",
            "sin",
            "interleaved=False",
            "seqlen_offsets=0",
        ),
        "RotaryEmbedding.__init__": (
            "self",
            "dim",
            "base=10000.0",
            "interleaved=False",
            "scale_base=None",
            "device=None",
        ),
        "RotaryEmbedding.forward": (
            "self",
            "qkv",
            "kv=None",
            "seqlen_offset=0",
            "max_seqlen=None",
            "num_heads_q=None",
        ),
    },
}

EXPORTS = [
    "flash_attn_func",
    "flash_attn_kvpacked_func",
    "flash_attn_qkvpacked_func",
    "flash_attn_varlen_func",
    "flash_attn_varlen_kvpacked_func",
    "flash_attn_varlen_qkvpacked_func",
    "flash_attn_with_kvcache",
]


def _resolve(module, dotted):
    obj = importlib.import_module(module)
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return getattr(obj, "_init_fn", obj)  # a torch custom op: the wrapped function (ring-flash-attn reads it)


def _ours(fn):
    out = []
    for p in inspect.signature(fn).parameters.values():
        prefix = {p.VAR_POSITIONAL: "*", p.VAR_KEYWORD: "**"}.get(p.kind, "")
        out.append((prefix + p.name, p.default))
    return out


CASES = [(m, n) for m, fns in UPSTREAM_2_8_3.items() for n in fns]


@pytest.mark.parametrize("module,name", CASES, ids=[f"{m}.{n}" for m, n in CASES])
def test_signature(module, name):
    ours = _ours(_resolve(module, name))
    upstream = [p.split("=", 1) for p in UPSTREAM_2_8_3[module][name]]
    assert [n for n, _ in ours] == [u[0] for u in upstream], f"{name}: parameter names/order differ"
    for (pname, default), u in zip(ours, upstream):
        if len(u) == 1:
            assert default is inspect.Parameter.empty, f"{name}({pname}): upstream has no default"
        else:
            assert default == ast.literal_eval(u[1]), f"{name}({pname}): default {default!r} != {u[1]}"


def test_version_and_exports():
    assert flash_attn.__version__ == "2.8.3"
    assert isinstance(flash_attn.__plus_version__, str)
    for name in EXPORTS:
        assert callable(getattr(flash_attn, name))
    assert sorted(flash_attn.__all__) == sorted(EXPORTS)


def test_interface_module_names():
    from flash_attn import flash_attn_interface as fi

    for name in (
        "_wrapped_flash_attn_forward",
        "_wrapped_flash_attn_backward",
        "_wrapped_flash_attn_varlen_forward",
        "_wrapped_flash_attn_varlen_backward",
    ):
        assert getattr(fi, name) is getattr(torch.ops.flash_attn, name.replace("_wrapped", ""))
    for name in ("fwd", "varlen_fwd", "bwd", "varlen_bwd", "fwd_kvcache"):
        assert callable(getattr(fi.flash_attn_gpu, name))
    assert fi.round_multiple(129, 128) == 256
    x = torch.randn(4, 6)[:, ::2]
    assert fi.maybe_contiguous(x).is_contiguous() and fi.maybe_contiguous(None) is None
    assert fi._get_block_size_n(torch.device("cpu"), 64, False, True) == 128
    assert fi.USE_TRITON_ROCM is False


def test_raw_extension_module():
    import flash_attn_2_cuda
    from flash_attn.flash_attn_interface import flash_attn_gpu

    for name in ("fwd", "varlen_fwd", "bwd", "varlen_bwd", "fwd_kvcache"):
        assert getattr(flash_attn_2_cuda, name) is getattr(flash_attn_gpu, name)
    params = inspect.signature(flash_attn_2_cuda.varlen_fwd).parameters
    assert len(params) == 21  # upstream 2.8.3's positional ABI (xformers passes 21 arguments)
    assert len(inspect.signature(flash_attn_2_cuda.varlen_bwd).parameters) == 24
    assert len(inspect.signature(flash_attn_2_cuda.fwd).parameters) == 13
    assert len(inspect.signature(flash_attn_2_cuda.bwd).parameters) == 19
    assert len(inspect.signature(flash_attn_2_cuda.fwd_kvcache).parameters) == 20


def test_other_modules():
    from flash_attn import bert_padding
    from flash_attn.layers import rotary

    for name in (
        "index_first_axis",
        "index_put_first_axis",
        "index_first_axis_residual",
        "pad_input",
        "unpad_input",
        "unpad_input_for_concatenated_sequences",
    ):
        assert callable(getattr(bert_padding, name))
    for name in (
        "apply_rotary_emb",
        "apply_rotary_emb_func",
        "apply_rotary_emb_torch",
        "rotate_half",
        "apply_rotary_emb_qkv_",
        "apply_rotary_emb_kv_",
        "RotaryEmbedding",
    ):
        assert callable(getattr(rotary, name))


def test_ring_attention_style_introspection():
    """ring-flash-attention reads inspect.getfullargspec(op._init_fn) and calls with kwargs only."""
    from flash_attn.flash_attn_interface import _flash_attn_backward, _flash_attn_forward

    args = inspect.getfullargspec(_flash_attn_forward._init_fn).args
    assert "window_size_left" in args and "window_size" not in args
    q, k, v = (torch.randn(1, 16, 2, 32) for _ in range(3))
    out, lse, s_dmask, rng = _flash_attn_forward(
        q=q,
        k=k,
        v=v,
        dropout_p=0.0,
        softmax_scale=0.2,
        causal=True,
        window_size_left=-1,
        window_size_right=-1,
        softcap=0.0,
        alibi_slopes=None,
        return_softmax=False,
    )
    assert lse.shape == (1, 2, 16) and s_dmask.shape == (0,) and rng.shape == (2,) and rng.dtype == torch.int64
    dq, dk, dv = (torch.empty_like(t) for t in (q, k, v))
    softmax_d = _flash_attn_backward(
        dout=torch.ones_like(out),
        q=q,
        k=k,
        v=v,
        out=out,
        softmax_lse=lse,
        dq=dq,
        dk=dk,
        dv=dv,
        dropout_p=0.0,
        softmax_scale=0.2,
        causal=True,
        window_size_left=-1,
        window_size_right=-1,
        softcap=0.0,
        alibi_slopes=None,
        deterministic=False,
    )
    assert softmax_d.shape == (1, 2, 128) and not torch.isnan(dq).any()
