"""Hugging Face transformers on machines without a GPU.

With a GPU, `attn_implementation="flash_attention_2"` works unchanged: transformers imports this
package as flash-attn 2.8.3. Without one, transformers refuses "flash_attention_2" by design (a
process-level CUDA check), so register our kernel under its own name instead:

    from flash_attn.integrations.transformers import register
    register()                                        # -> "fa_plus"
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="fa_plus")

The name must not contain "flash": transformers routes such names to its flash-attention/kernels
loader. The mask interface is transformers' own flash_attention_mask (None, or the 2-D padding
mask), and padded batches go through the varlen kernel, as transformers' FA2 path does.
"""

import torch

from flash_attn.bert_padding import index_first_axis, pad_input, unpad_input
from flash_attn.flash_attn_interface import flash_attn_func, flash_attn_varlen_func

DEFAULT_NAME = "fa_plus"


def _unpad_query(query, attention_mask, q_len):
    """(b, q_len, h, d) -> packed q, indices, cu_seqlens, max_seqlen for the query rows."""
    batch = query.shape[0]
    if q_len == attention_mask.shape[1]:
        q, indices, cu, max_len, _ = unpad_input(query, attention_mask)
        return q, indices, cu, max_len
    if q_len == 1:  # decoding: one query per sequence
        cu = torch.arange(batch + 1, dtype=torch.int32, device=query.device)
        return query.squeeze(1), cu[:-1].long(), cu, 1
    q, indices, cu, max_len, _ = unpad_input(query, attention_mask[:, -q_len:])  # left padding
    return q, indices, cu, max_len


def attention_forward(
    module,
    query,
    key,
    value,
    attention_mask,
    dropout=0.0,
    scaling=None,
    sliding_window=None,
    softcap=None,
    is_causal=None,
    **kwargs,
):
    """transformers attention interface: query (b, h, s_q, d), key/value (b, h_k, s_k, d) ->
    ((b, s_q, h, d), None)."""
    q, k, v = (t.transpose(1, 2) for t in (query, key, value))  # (b, s, h, d) views
    batch, q_len = q.shape[0], q.shape[1]
    causal = module.is_causal if is_causal is None else is_causal
    kv_len = k.shape[1]
    window = (sliding_window - 1, sliding_window - 1) if sliding_window and kv_len > sliding_window else (-1, -1)
    common = dict(dropout_p=dropout, softmax_scale=scaling, causal=causal, window_size=window, softcap=softcap or 0.0)
    if attention_mask is None and kwargs.get("cu_seq_lens_q") is not None:  # packed sequences
        out = flash_attn_varlen_func(
            q.reshape(-1, *q.shape[2:]),
            k.reshape(-1, *k.shape[2:]),
            v.reshape(-1, *v.shape[2:]),
            kwargs["cu_seq_lens_q"],
            kwargs["cu_seq_lens_k"],
            kwargs["max_length_q"],
            kwargs["max_length_k"],
            **common,
        )
        return out.reshape(batch, q_len, *out.shape[1:]), None
    if attention_mask is None:
        return flash_attn_func(q, k, v, **common), None
    mask = attention_mask.bool()
    k_unpad, _, cu_k, max_k, _ = unpad_input(k, mask)
    v_unpad = index_first_axis(v.reshape(-1, *v.shape[2:]), torch.nonzero(mask.flatten()).flatten())
    q_unpad, indices_q, cu_q, max_q = _unpad_query(q, mask, q_len)
    out = flash_attn_varlen_func(q_unpad, k_unpad, v_unpad, cu_q, cu_k, max_q, max_k, **common)
    return pad_input(out, indices_q, batch, q_len), None


def register(name: str = DEFAULT_NAME) -> str:
    """Registers flash_attn as transformers attention `name` (with its mask function) and returns
    the name to pass as attn_implementation."""
    if "flash" in name:
        raise ValueError(f"the name must not contain 'flash' (transformers reserves those): {name!r}")
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

    AttentionInterface.register(name, attention_forward)
    AttentionMaskInterface.register(name, flash_attention_mask)
    return name
