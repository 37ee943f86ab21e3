"""torch.compile(fullgraph=True) over forward and backward (no graph break), and opcheck of the
custom ops' schemas and fake implementations."""

import pytest
import torch

from flash_attn import flash_attn_func, flash_attn_varlen_func
from flash_attn.flash_attn_interface import (
    _flash_attn_backward,
    _flash_attn_forward,
    _flash_attn_varlen_backward,
    _flash_attn_varlen_forward,
)


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compile_fullgraph_forward_backward(backend):
    torch._dynamo.reset()

    def step(q, k, v):
        out = flash_attn_func(q, k, v, causal=True, window_size=(16, 0), softcap=5.0)
        return (out * out).sum()

    q, k, v = (torch.randn(2, 40, 4, 32, requires_grad=True) for _ in range(3))
    loss = torch.compile(step, fullgraph=True, backend=backend)(q, k, v)
    grads = torch.autograd.grad(loss, (q, k, v))
    q2, k2, v2 = (t.detach().clone().requires_grad_() for t in (q, k, v))
    ref_loss = step(q2, k2, v2)
    ref_grads = torch.autograd.grad(ref_loss, (q2, k2, v2))
    torch.testing.assert_close(loss, ref_loss)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b)


def test_compile_fullgraph_varlen():
    torch._dynamo.reset()
    cu = torch.tensor([0, 10, 35], dtype=torch.int32)

    def step(q, k, v):
        return flash_attn_varlen_func(q, k, v, cu, cu, 25, 25, causal=True).sum()

    q, k, v = (torch.randn(35, 2, 16, requires_grad=True) for _ in range(3))
    loss = torch.compile(step, fullgraph=True, backend="aot_eager")(q, k, v)
    grads = torch.autograd.grad(loss, (q, k, v))
    q2, k2, v2 = (t.detach().clone().requires_grad_() for t in (q, k, v))
    ref_grads = torch.autograd.grad(step(q2, k2, v2), (q2, k2, v2))
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b)


_CHECKS = ("test_schema", "test_faketensor", "test_aot_dispatch_dynamic")


@pytest.mark.parametrize("return_softmax,dropout_p", [(False, 0.0), (True, 0.1)])
def test_opcheck_forward(return_softmax, dropout_p):
    q, k, v = (torch.randn(2, 33, 4, 16) for _ in range(3))
    torch.library.opcheck(
        _flash_attn_forward,
        (q, k, v, dropout_p, 0.25, True, -1, -1, 0.0, None, return_softmax),
        test_utils=_CHECKS if dropout_p == 0 else ("test_schema", "test_faketensor"),
    )
    cu = torch.tensor([0, 20, 33], dtype=torch.int32)
    qv, kv, vv = (t[0] for t in (q, k, v))
    torch.library.opcheck(_flash_attn_varlen_forward, (qv, kv, vv, cu, cu, 20, 20, 0.0, 0.25, True), test_utils=_CHECKS)


def test_opcheck_backward():
    q, k, v, out, dout = (torch.randn(2, 33, 4, 16) for _ in range(5))
    _, lse, _, rng = _flash_attn_forward(q, k, v, 0.0, 0.25, False, -1, -1, 0.0, None, False)
    dq, dk, dv = (torch.empty_like(t) for t in (q, k, v))
    torch.library.opcheck(
        _flash_attn_backward,
        (dout, q, k, v, out, lse, dq, dk, dv, 0.0, 0.25, False, -1, -1, 0.0, None, False, rng),
        test_utils=_CHECKS,
    )
    cu = torch.tensor([0, 20, 33], dtype=torch.int32)
    qv, kv, vv, ov, dov = (t[0] for t in (q, k, v, out, dout))
    _, lse_v, _, _ = _flash_attn_varlen_forward(qv, kv, vv, cu, cu, 20, 20, 0.0, 0.25, False)
    dqv, dkv, dvv = (torch.empty_like(t) for t in (qv, kv, vv))
    torch.library.opcheck(
        _flash_attn_varlen_backward,
        (dov, qv, kv, vv, ov, lse_v, dqv, dkv, dvv, cu, cu, 20, 20, 0.0, 0.25, False, -1, -1, 0.0, None, False, None),
        test_utils=_CHECKS,
    )
