"""flash_attn.layers.rotary against a float64 rotation, for both pair layouts, partial rotary,
offsets, varlen, in-place use and RotaryEmbedding."""

import pytest
import torch

from flash_attn.layers.rotary import RotaryEmbedding, apply_rotary_emb, apply_rotary_emb_torch


def _rotation_ref(x, cos, sin, positions, interleaved):
    """x (..., s, h, d) float64; positions broadcastable to (..., s)."""
    rd = cos.shape[1] * 2
    angle_c, angle_s = cos.double()[positions][..., None, :], sin.double()[positions][..., None, :]
    x = x.double()
    idx1 = torch.arange(0, rd, 2) if interleaved else torch.arange(rd // 2)
    idx2 = idx1 + 1 if interleaved else idx1 + rd // 2
    out = x.clone()
    out[..., idx1] = x[..., idx1] * angle_c - x[..., idx2] * angle_s
    out[..., idx2] = x[..., idx1] * angle_s + x[..., idx2] * angle_c
    return out


@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("rotary_dim", [32, 64])
def test_apply_rotary_emb(interleaved, rotary_dim):
    x = torch.randn(2, 20, 3, 64)
    angles = torch.rand(40, rotary_dim // 2) * 6
    cos, sin = angles.cos(), angles.sin()
    offsets = torch.tensor([0, 7])
    out = apply_rotary_emb(x, cos, sin, interleaved=interleaved, seqlen_offsets=offsets)
    ref = _rotation_ref(x, cos, sin, torch.arange(20)[None, :] + offsets[:, None], interleaved)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        apply_rotary_emb_torch(x, cos[5:25], sin[5:25], interleaved).double(),
        _rotation_ref(x, cos, sin, torch.arange(5, 25), interleaved),
        atol=1e-5,
        rtol=1e-5,
    )
    y = x.clone()
    assert apply_rotary_emb(y, cos, sin, interleaved=interleaved, inplace=True, seqlen_offsets=3) is y
    torch.testing.assert_close(
        y.double(), _rotation_ref(x, cos, sin, torch.arange(3, 23), interleaved), atol=1e-5, rtol=1e-5
    )


def test_varlen_positions_restart_per_sequence():
    x = torch.randn(9, 2, 16)
    cu = torch.tensor([0, 4, 9], dtype=torch.int32)
    angles = torch.rand(16, 8)
    out = apply_rotary_emb(x, angles.cos(), angles.sin(), cu_seqlens=cu, max_seqlen=5)
    positions = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 4])
    ref = _rotation_ref(x, angles.cos(), angles.sin(), positions, False)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)


def test_rotary_embedding_module():
    rope = RotaryEmbedding(32)
    qkv = torch.randn(2, 10, 3, 4, 32)
    out = rope(qkv.clone())
    inv_freq = 1.0 / (10000 ** (torch.arange(0, 32, 2, dtype=torch.float64) / 32))
    angles = torch.outer(torch.arange(10, dtype=torch.float64), inv_freq)
    for i in (0, 1):
        ref = _rotation_ref(qkv[:, :, i], angles.cos(), angles.sin(), torch.arange(10), False)
        torch.testing.assert_close(out[:, :, i].double(), ref, atol=1e-5, rtol=1e-5)
    assert torch.equal(out[:, :, 2], qkv[:, :, 2])
    q, kv = rope(qkv[:, :, 0].clone(), kv=qkv[:, :, 1:].clone(), seqlen_offset=2)
    assert q.shape == (2, 10, 4, 32) and kv.shape == (2, 10, 2, 4, 32)


def test_gradient():
    x = torch.randn(1, 6, 2, 8, dtype=torch.float64, requires_grad=True)
    angles = torch.rand(6, 4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: apply_rotary_emb(t, angles.cos(), angles.sin()), (x,))
