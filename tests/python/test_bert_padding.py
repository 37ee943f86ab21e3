"""flash_attn.bert_padding: unpad/pad round trips, 5-value unpad_input, gradients of the index
functions, and concatenated sequences."""

import pytest
import torch

from flash_attn.bert_padding import (
    index_first_axis,
    index_first_axis_residual,
    index_put_first_axis,
    pad_input,
    unpad_input,
    unpad_input_for_concatenated_sequences,
)


def test_unpad_pad_round_trip():
    lengths = torch.tensor([5, 1, 8, 0])
    mask = torch.arange(8)[None, :] < lengths[:, None]
    x = torch.randn(4, 8, 3, 2)
    x_unpad, indices, cu_seqlens, max_seqlen, seqused = unpad_input(x, mask)
    assert x_unpad.shape == (14, 3, 2) and indices.dtype == torch.int64
    assert cu_seqlens.tolist() == [0, 5, 6, 14, 14] and cu_seqlens.dtype == torch.int32
    assert max_seqlen == 8 and isinstance(max_seqlen, int) and seqused.tolist() == [5, 1, 8, 0]
    padded = pad_input(x_unpad, indices, 4, 8)
    assert torch.equal(padded, x * mask[..., None, None])


def test_unused_mask():
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]])
    unused = torch.tensor([[0, 0, 1, 0], [0, 1, 1, 0]])
    x = torch.randn(2, 4, 5)
    x_unpad, _, cu_seqlens, max_seqlen, seqused = unpad_input(x, mask, unused)
    assert cu_seqlens.tolist() == [0, 3, 6] and max_seqlen == 3 and seqused.tolist() == [2, 1]
    assert x_unpad.shape == (6, 5)


def test_index_functions_gradients():
    x = torch.randn(10, 3, 4, dtype=torch.float64, requires_grad=True)
    idx = torch.tensor([7, 2, 3, 9])
    assert torch.autograd.gradcheck(lambda t: index_first_axis(t, idx), (x,))
    vals = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: index_put_first_axis(t, idx, 10), (vals,))
    out, residual = index_first_axis_residual(x, idx)
    assert torch.equal(out, x[idx]) and torch.equal(residual, x.detach())


def test_concatenated_sequences():
    lengths = torch.tensor([[2, 3, 0, 0, 0, 0], [3, 2, 0, 0, 0, 0]])
    x = torch.randn(2, 6, 4)
    x_unpad, indices, cu_seqlens, max_seqlen = unpad_input_for_concatenated_sequences(x, lengths)
    assert cu_seqlens.tolist() == [0, 2, 5, 8, 10] and max_seqlen == 3
    assert torch.equal(x_unpad, x[:, :5].reshape(10, 4))


def test_rearrange_is_einops():
    einops = pytest.importorskip("einops")
    from flash_attn.bert_padding import rearrange

    assert rearrange is einops.rearrange
