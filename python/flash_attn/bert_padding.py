"""Padding helpers (flash-attn 2.8.3's flash_attn.bert_padding): move between padded
(batch, seqlen, ...) tensors and the packed (total_tokens, ...) layout of the varlen functions.

`rearrange` is re-exported from einops, as upstream does (clients import it from here). einops
is a dependency of the package, but nothing here needs it: when it is missing, only the
`rearrange` import fails, with a message saying so.
"""

import torch
import torch.nn.functional as F


def __getattr__(name):
    if name == "rearrange":
        try:
            from einops import rearrange
        except ImportError as e:
            raise ImportError(
                "flash_attn.bert_padding.rearrange is einops.rearrange; install einops (pip install einops)"
            ) from e
        return rearrange
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _flat_rows(t):
    """(n, ...) -> (n, prod(...)) view or copy, so indexing works on rows."""
    return t.reshape(t.shape[0], -1)


class IndexFirstAxis(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, indices):
        # input (n, ...), indices (k,) int64 -> (k, ...)
        ctx.save_for_backward(indices)
        assert input.ndim >= 2
        ctx.first_axis_dim, other_shape = input.shape[0], input.shape[1:]
        rows = torch.gather(_flat_rows(input), 0, indices[:, None].expand(-1, other_shape.numel()))
        return rows.reshape(-1, *other_shape)

    @staticmethod
    def backward(ctx, grad_output):
        (indices,) = ctx.saved_tensors
        assert grad_output.ndim >= 2
        other_shape = grad_output.shape[1:]
        grad_input = torch.zeros(
            (ctx.first_axis_dim, other_shape.numel()), device=grad_output.device, dtype=grad_output.dtype
        )
        grad_input.scatter_(0, indices[:, None].expand(-1, other_shape.numel()), _flat_rows(grad_output))
        return grad_input.reshape(ctx.first_axis_dim, *other_shape), None


index_first_axis = IndexFirstAxis.apply


class IndexPutFirstAxis(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values, indices, first_axis_dim):
        # values (k, ...) scattered to rows `indices` of zeros (first_axis_dim, ...)
        ctx.save_for_backward(indices)
        assert indices.ndim == 1
        assert values.ndim >= 2
        output = torch.zeros(first_axis_dim, *values.shape[1:], device=values.device, dtype=values.dtype)
        output[indices] = values
        return output

    @staticmethod
    def backward(ctx, grad_output):
        (indices,) = ctx.saved_tensors
        return grad_output[indices], None, None


index_put_first_axis = IndexPutFirstAxis.apply


class IndexFirstAxisResidual(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, indices):
        # -> (input[indices], input.detach()); the residual's gradient flows back too
        ctx.save_for_backward(indices)
        assert input.ndim >= 2
        ctx.first_axis_dim = input.shape[0]
        return input[indices], input.detach()

    @staticmethod
    def backward(ctx, grad_output, grad_residual):
        (indices,) = ctx.saved_tensors
        assert grad_output.ndim >= 2
        grad_residual.index_add_(0, indices, grad_output)
        return grad_residual, None


index_first_axis_residual = IndexFirstAxisResidual.apply


def _cu_seqlens(seqlens):
    return F.pad(torch.cumsum(seqlens, dim=0, dtype=torch.int32), (1, 0))


def unpad_input(hidden_states, attention_mask, unused_mask=None):
    """hidden_states (batch, seqlen, ...), attention_mask (batch, seqlen) with 1 = valid,
    unused_mask (batch, seqlen) optional: tokens allocated but unused (counted, not "used").

    Returns (hidden_states (total, ...), indices (total,) int64 into the flattened
    (batch * seqlen), cu_seqlens int32 (batch + 1,), max_seqlen_in_batch int, seqused int32
    (batch,) = tokens selected by attention_mask alone)."""
    all_masks = (attention_mask + unused_mask) if unused_mask is not None else attention_mask
    seqlens_in_batch = all_masks.sum(dim=-1, dtype=torch.int32)
    used_seqlens_in_batch = attention_mask.sum(dim=-1, dtype=torch.int32)
    indices = torch.nonzero(all_masks.flatten(), as_tuple=False).flatten()
    max_seqlen_in_batch = seqlens_in_batch.max().item()
    flat = hidden_states.reshape(-1, *hidden_states.shape[2:])
    return (
        index_first_axis(flat, indices),
        indices,
        _cu_seqlens(seqlens_in_batch),
        max_seqlen_in_batch,
        used_seqlens_in_batch,
    )


def unpad_input_for_concatenated_sequences(hidden_states, attention_mask_in_length):
    """Several sequences concatenated per row: attention_mask_in_length (batch, seqlen) lists the
    lengths of the sequences packed in each row, e.g. [[2, 3, 0, 0, 0, 0], [3, 2, 0, 0, 0, 0]].
    Returns (hidden_states (total, ...), indices, cu_seqlens over every sequence, max_seqlen)."""
    length = attention_mask_in_length.sum(dim=-1)
    seqlen = attention_mask_in_length.size(-1)
    positions = torch.arange(seqlen, device=length.device).expand(len(length), seqlen)
    attention_mask_2d = positions < length.unsqueeze(1)
    real_lengths = attention_mask_in_length.flatten()
    seqlens_in_batch = real_lengths[real_lengths.nonzero().squeeze(1)].to(torch.int32)
    indices = torch.nonzero(attention_mask_2d.flatten(), as_tuple=False).flatten()
    max_seqlen_in_batch = seqlens_in_batch.max().item()
    flat = hidden_states.reshape(-1, *hidden_states.shape[2:])
    return index_first_axis(flat, indices), indices, _cu_seqlens(seqlens_in_batch), max_seqlen_in_batch


def pad_input(hidden_states, indices, batch, seqlen):
    """hidden_states (total, ...), indices (total,) from unpad_input -> (batch, seqlen, ...),
    zeros at padding."""
    output = index_put_first_axis(hidden_states, indices, batch * seqlen)
    return output.reshape(batch, seqlen, *hidden_states.shape[1:])
