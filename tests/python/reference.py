"""Test oracle: textbook attention in torch with flash-attn 2.8's semantics, and flash-attn's
error rule.

attention_ref(..., upcast=True) computes in float64 and is the truth. attention_ref(...,
upcast=False) computes in the inputs' dtype and is the "plain same-dtype implementation" whose
error sets the bar: ours must be within `factor` times its error (2 for out and lse, 3 for
gradients), plus a tiny absolute slack for cases where that error is ~0.
"""

import torch

FWD_FACTOR, BWD_FACTOR = 2.0, 3.0


def normalise_window(causal, window, max_seqlen_k):
    """The library's rule (fa_internal.h): causal -> right = 0; bounds >= max_seqlen_k and
    negative bounds -> -1 (unbounded); is_causal = (left < 0 and right == 0)."""
    left, right = (int(w) for w in window)
    if causal:
        right = 0
    left = -1 if left < 0 or left >= max_seqlen_k else left
    right = -1 if right < 0 or right >= max_seqlen_k else right
    return left, right, left < 0 and right == 0


def visible(s_q, s_k, left, right, device=None):
    """(s_q, s_k) bool: key j visible from query i (bottom-right aligned window)."""
    i = torch.arange(s_q, device=device).view(-1, 1)
    j = torch.arange(s_k, device=device).view(1, -1)
    diag = i + s_k - s_q
    ok = torch.ones(s_q, s_k, dtype=torch.bool, device=device)
    if left >= 0:
        ok &= j >= diag - left
    if right >= 0:
        ok &= j <= diag + right
    return ok


def alibi_bias(slopes, s_q, s_k, is_causal, dtype):
    """slopes (h,) -> (h, s_q, s_k): +slope * j when causal, else -slope * |i + s_k - s_q - j|."""
    i = torch.arange(s_q, dtype=dtype).view(-1, 1)
    j = torch.arange(s_k, dtype=dtype).view(1, -1)
    dist = j.expand(s_q, s_k) if is_causal else -(i + s_k - s_q - j).abs()
    return slopes.to(dtype).view(-1, 1, 1) * dist


def attention_ref(
    q,
    k,
    v,
    *,
    scale=None,
    causal=False,
    window=(-1, -1),
    softcap=0.0,
    alibi=None,
    keep=None,
    dropout_p=0.0,
    upcast=True,
    max_seqlen_k=None,
):
    """One batch of equal-length sequences.

    q (b, s_q, h, d), k (b, s_k, h_k, d), v (b, s_k, h_k, d_v); alibi (h,) or (b, h) fp32;
    keep (b, h, s_q, s_k) bool dropout mask. Returns out (b, s_q, h, d_v), lse (b, h, s_q) with
    +inf on rows that see no key, probs (b, h, s_q, s_k) before dropout.
    """
    dtype = torch.float64 if upcast else q.dtype
    b, s_q, h, d = q.shape
    s_k, h_k = k.shape[1], k.shape[2]
    scale = d**-0.5 if scale is None else scale
    left, right, is_causal = normalise_window(causal, window, s_k if max_seqlen_k is None else max_seqlen_k)
    qf = q.to(dtype)
    kf = k.to(dtype).repeat_interleave(h // h_k, dim=2)
    vf = v.to(dtype).repeat_interleave(h // h_k, dim=2)
    s = torch.einsum("bihd,bjhd->bhij", qf, kf) * scale  # (b, h, s_q, s_k)
    if softcap > 0:
        s = torch.tanh(s / softcap) * softcap
    if alibi is not None:
        slopes = alibi.reshape(-1, h) if alibi.dim() == 2 else alibi.reshape(1, h).expand(b, h)
        s = s + torch.stack([alibi_bias(slopes[i], s_q, s_k, is_causal, dtype) for i in range(b)])
    vis = visible(s_q, s_k, left, right)
    s = s.masked_fill(~vis, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    empty = ~vis.any(dim=-1)  # (s_q,)
    probs = torch.exp(s - lse.unsqueeze(-1).masked_fill(empty.view(1, 1, -1, 1), 0.0))
    probs = probs.masked_fill(empty.view(1, 1, -1, 1), 0.0)
    lse = lse.masked_fill(empty.view(1, 1, -1), float("inf"))
    p = probs if keep is None else probs * keep.to(dtype) / (1.0 - dropout_p)
    out = torch.einsum("bhij,bjhd->bihd", p.to(dtype), vf)
    if not upcast:
        out = out.to(q.dtype)
    return out, lse, probs


def assert_rule(name, ours, ref, base, factor, atol=1e-5):
    """max|ours - ref| <= factor * max|base - ref| + atol, with +inf allowed where ref is +inf."""
    ours64, ref64, base64 = (t.detach().to("cpu", torch.float64) for t in (ours, ref, base))
    assert ours64.shape == ref64.shape, f"{name}: shape {tuple(ours64.shape)} != {tuple(ref64.shape)}"
    assert not torch.isnan(ours64).any(), f"{name}: NaN at {torch.nonzero(torch.isnan(ours64))[:5].tolist()}"
    inf = torch.isinf(ref64)
    if inf.any():
        assert torch.equal(torch.isinf(ours64), inf), f"{name}: +inf pattern differs from the reference"
        assert (ours64[inf] == ref64[inf]).all(), f"{name}: infinities of the wrong sign"
        ours64, ref64, base64 = ours64[~inf], ref64[~inf], base64[~inf]
    if ours64.numel() == 0:
        return
    err = (ours64 - ref64).abs().max().item()
    base_err = (base64 - ref64).abs().nan_to_num(0.0).max().item()
    assert err <= factor * base_err + atol, (
        f"{name}: max error {err:.3e} > {factor} x same-dtype error {base_err:.3e} + {atol:g}"
    )


def dropout_keep(s_dmask, s_q, s_k):
    """Keep mask from our S_dmask: dropped entries are negative (a dropped 0 is -0.0)."""
    return ~torch.signbit(s_dmask[:, :, :s_q, :s_k])
