"""Rotary position embedding (flash-attn 2.8.3's flash_attn.layers.rotary), in plain torch, so it
runs on every device; autograd comes from torch.

x (batch, seqlen, nheads, headdim), or (total, nheads, headdim) with cu_seqlens; cos/sin
(seqlen_ro, rotary_dim / 2). The first rotary_dim features of x are rotated; the rest pass
through. interleaved=True pairs features (0, 1), (2, 3), ...; False (GPT-NeoX) pairs i with
i + rotary_dim / 2.
"""

from typing import Optional, Tuple, Union

import torch


def _positions(x, seqlen_offsets, cu_seqlens):
    """Rotary position of every token: (batch, seqlen) or, varlen, (total,)."""
    if cu_seqlens is None:
        batch, seqlen = x.shape[0], x.shape[1]
        pos = torch.arange(seqlen, device=x.device).expand(batch, seqlen)
        if isinstance(seqlen_offsets, torch.Tensor):
            return pos + seqlen_offsets.to(x.device, torch.long).reshape(-1, 1)
        return pos + int(seqlen_offsets)
    total = x.shape[0]
    token = torch.arange(total, device=x.device)
    cu = cu_seqlens.to(x.device, torch.long)
    seq = torch.searchsorted(cu[1:], token, right=True)
    pos = token - cu[seq]
    if isinstance(seqlen_offsets, torch.Tensor):
        return pos + seqlen_offsets.to(x.device, torch.long)[seq]
    return pos + int(seqlen_offsets)


def _rotate(x, cos, sin, interleaved):
    """x (..., rotary_dim), cos/sin (..., rotary_dim / 2) broadcastable; computed in >= fp32."""
    xf = x.to(cos.dtype)
    if interleaved:
        x1, x2 = xf[..., 0::2], xf[..., 1::2]
    else:
        x1, x2 = xf.chunk(2, dim=-1)
    o1 = x1 * cos - x2 * sin
    o2 = x1 * sin + x2 * cos
    out = torch.stack((o1, o2), dim=-1).flatten(-2) if interleaved else torch.cat((o1, o2), dim=-1)
    return out.to(x.dtype)


def rotate_half(x, interleaved=False):
    """(x1, x2) -> (-x2, x1) over the pairs rotary uses."""
    if interleaved:
        x1, x2 = x[..., ::2], x[..., 1::2]
        return torch.stack((-x2, x1), dim=-1).flatten(-2)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_emb_torch(x, cos, sin, interleaved=False):
    """Reference rotary: x (batch, seqlen, nheads, headdim), cos/sin (seqlen, rotary_dim / 2)."""
    rd = cos.shape[-1] * 2
    rep = (lambda t: t.repeat_interleave(2, dim=-1)) if interleaved else (lambda t: torch.cat((t, t), dim=-1))
    c, s = rep(cos)[:, None, :], rep(sin)[:, None, :]
    return torch.cat((x[..., :rd] * c + rotate_half(x[..., :rd], interleaved) * s, x[..., rd:]), dim=-1)


def apply_rotary_emb(
    x,
    cos,
    sin,
    interleaved=False,
    inplace=False,
    seqlen_offsets: Union[int, torch.Tensor] = 0,
    cu_seqlens: Optional[torch.Tensor] = None,
    max_seqlen: Optional[int] = None,
):
    """Returns x rotated (x itself when inplace). seqlen_offsets: int or (batch,) tensor added to
    the positions (e.g. the kv-cache length at inference). max_seqlen: accepted for upstream
    compatibility (positions come from cu_seqlens)."""
    rotary_dim = cos.shape[-1] * 2
    if rotary_dim > x.shape[-1]:
        raise ValueError(
            f"apply_rotary_emb: rotary_dim {rotary_dim} (2 * cos.shape[-1]) must be <= headdim {x.shape[-1]}"
        )
    if sin.shape != cos.shape:
        raise ValueError(f"apply_rotary_emb: sin.shape {tuple(sin.shape)} must equal cos.shape {tuple(cos.shape)}")
    pos = _positions(x, seqlen_offsets, cu_seqlens)
    compute = torch.promote_types(x.dtype, torch.float32)
    c = cos.to(compute)[pos].unsqueeze(-2)  # (..., 1, rotary_dim / 2): broadcast over heads
    s = sin.to(compute)[pos].unsqueeze(-2)
    rotated = _rotate(x[..., :rotary_dim], c, s, interleaved)
    if inplace:
        x[..., :rotary_dim] = rotated
        return x
    if rotary_dim == x.shape[-1]:
        return rotated
    return torch.cat((rotated, x[..., rotary_dim:]), dim=-1)


def apply_rotary_emb_func(*args, **kwargs):
    return apply_rotary_emb(*args, **kwargs)


def apply_rotary_emb_qkv_(
    qkv,
    cos,
    sin,
    cos_k=None,
    sin_k=None,
    interleaved=False,
    seqlen_offsets: Union[int, torch.Tensor] = 0,
    num_heads_q: Optional[int] = None,
):
    """In place on qkv (batch, seqlen, 3, nheads, headdim), or (batch, seqlen, nheads_q + 2 *
    nheads_k, headdim) with num_heads_q: rotates q with cos/sin and k with cos_k/sin_k."""
    cos_k = cos if cos_k is None else cos_k
    sin_k = sin if sin_k is None else sin_k
    if qkv.dim() == 5:
        q, k = qkv[:, :, 0], qkv[:, :, 1]
    else:
        if num_heads_q is None:
            raise ValueError("apply_rotary_emb_qkv_: a 4-D qkv needs num_heads_q")
        num_heads_k = (qkv.shape[2] - num_heads_q) // 2
        q, k = qkv[:, :, :num_heads_q], qkv[:, :, num_heads_q : num_heads_q + num_heads_k]
    apply_rotary_emb(q, cos, sin, interleaved, inplace=True, seqlen_offsets=seqlen_offsets)
    apply_rotary_emb(k, cos_k, sin_k, interleaved, inplace=True, seqlen_offsets=seqlen_offsets)
    return qkv


def apply_rotary_emb_kv_(kv, cos, sin, interleaved=False, seqlen_offsets: Union[int, torch.Tensor] = 0):
    """In place on the k of kv (batch, seqlen, 2, nheads, headdim)."""
    apply_rotary_emb(kv[:, :, 0], cos, sin, interleaved, inplace=True, seqlen_offsets=seqlen_offsets)
    return kv


class RotaryEmbedding(torch.nn.Module):
    """RoPE (Su et al.), optionally with XPos scaling (scale_base). Caches cos/sin up to the
    longest sequence seen."""

    def __init__(self, dim: int, base=10000.0, interleaved=False, scale_base=None, device=None):
        super().__init__()
        self.dim = dim
        self.base = float(base)
        self.interleaved = interleaved
        self.scale_base = scale_base
        self.register_buffer("inv_freq", self._compute_inv_freq(device), persistent=False)
        scale = None
        if scale_base is not None:
            scale = (torch.arange(0, dim, 2, device=device, dtype=torch.float32) + 0.4 * dim) / (1.4 * dim)
        self.register_buffer("scale", scale, persistent=False)
        self._seq_len_cached = 0
        self._cos_cached = self._sin_cached = self._cos_k_cached = self._sin_k_cached = None

    def _compute_inv_freq(self, device=None):
        return 1.0 / (self.base ** (torch.arange(0, self.dim, 2, device=device, dtype=torch.float32) / self.dim))

    def _update_cos_sin_cache(self, seqlen, device=None, dtype=None):
        stale = (
            self._cos_cached is None
            or seqlen > self._seq_len_cached
            or self._cos_cached.device != device
            or self._cos_cached.dtype != dtype
            or (self.training and self._cos_cached.is_inference())
        )
        if not stale:
            return
        self._seq_len_cached = seqlen
        t = torch.arange(seqlen, device=device, dtype=torch.float32)  # positions in fp32: exact to 2^24
        inv_freq = self.inv_freq.float()
        if inv_freq.device != t.device:
            inv_freq = self._compute_inv_freq(device)
        freqs = torch.outer(t, inv_freq)  # (seqlen, dim / 2)
        if self.scale is None:
            self._cos_cached, self._sin_cached = torch.cos(freqs).to(dtype), torch.sin(freqs).to(dtype)
            return
        power = (torch.arange(seqlen, dtype=self.scale.dtype, device=self.scale.device) - seqlen // 2) / self.scale_base
        scale = self.scale.to(device=power.device) ** power.unsqueeze(-1)
        self._cos_cached = (torch.cos(freqs) * scale).to(dtype)
        self._sin_cached = (torch.sin(freqs) * scale).to(dtype)
        self._cos_k_cached = (torch.cos(freqs) / scale).to(dtype)
        self._sin_k_cached = (torch.sin(freqs) / scale).to(dtype)

    def forward(
        self,
        qkv: torch.Tensor,
        kv: Optional[torch.Tensor] = None,
        seqlen_offset: Union[int, torch.Tensor] = 0,
        max_seqlen: Optional[int] = None,
        num_heads_q: Optional[int] = None,
    ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        """qkv (batch, seqlen, 3, nheads, headdim) (or 4-D with num_heads_q), or q when kv
        (batch, seqlen, 2, nheads, headdim) is given. Rotates q and k in place and returns them."""
        seqlen = qkv.shape[1]
        if max_seqlen is not None:
            self._update_cos_sin_cache(max_seqlen, device=qkv.device, dtype=qkv.dtype)
        elif isinstance(seqlen_offset, int):
            self._update_cos_sin_cache(seqlen + seqlen_offset, device=qkv.device, dtype=qkv.dtype)
        if kv is None:
            cos_k = self._cos_k_cached if self.scale is not None else None
            sin_k = self._sin_k_cached if self.scale is not None else None
            return apply_rotary_emb_qkv_(
                qkv,
                self._cos_cached,
                self._sin_cached,
                cos_k,
                sin_k,
                interleaved=self.interleaved,
                seqlen_offsets=seqlen_offset,
                num_heads_q=num_heads_q,
            )
        q = apply_rotary_emb(
            qkv,
            self._cos_cached,
            self._sin_cached,
            interleaved=self.interleaved,
            inplace=True,
            seqlen_offsets=seqlen_offset,
        )
        cos_k = self._cos_cached if self.scale is None else self._cos_k_cached
        sin_k = self._sin_cached if self.scale is None else self._sin_k_cached
        kv = apply_rotary_emb_kv_(kv, cos_k, sin_k, interleaved=self.interleaved, seqlen_offsets=seqlen_offset)
        return q, kv
