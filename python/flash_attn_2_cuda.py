"""Top-level stand-in for upstream flash-attn's compiled extension module `flash_attn_2_cuda`
(TransformerEngine imports `varlen_bwd` from it unconditionally). The functions run on any
device flash_attn supports; see flash_attn/_extension.py."""

from flash_attn._extension import bwd, fwd, fwd_kvcache, varlen_bwd, varlen_fwd

__all__ = ["fwd", "varlen_fwd", "bwd", "varlen_bwd", "fwd_kvcache"]
