"""The same checks with CUDA tensors (skipped without a GPU): numerics of the batched, varlen
and kvcache grids against the CPU float64 reference, dropout with the CUDA generator, CUDA-graph
capture, side streams, torch.compile and device checks."""

import pytest
import torch
from reference import BWD_FACTOR, FWD_FACTOR, assert_rule, attention_ref, dropout_keep
from test_attention import CASES as BATCHED_CASES
from test_attention import _ids, check_case
from test_kvcache import CASES as KV_CASES
from test_kvcache import _id as _kv_id
from test_kvcache import check_kvcache_case
from test_varlen import CASES as VARLEN_CASES
from test_varlen import _varlen_id, check_varlen_case

from flash_attn import _lib, flash_attn_func, flash_attn_varlen_func, flash_attn_with_kvcache

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
CUDA = "cuda"


@pytest.mark.parametrize("case", BATCHED_CASES, ids=_ids)
def test_forward_backward(case):
    check_case(case, CUDA)


@pytest.mark.parametrize("case", VARLEN_CASES, ids=_varlen_id)
def test_varlen_forward_backward(case):
    check_varlen_case(case, CUDA)


@pytest.mark.parametrize("case", KV_CASES, ids=_kv_id)
def test_kvcache(case):
    check_kvcache_case(case, CUDA)


def test_dropout_rate_mask_and_reproducibility():
    p = 0.17
    q, k, v = (torch.randn(2, 200, 4, 64, dtype=torch.float16, device=CUDA, requires_grad=True) for _ in range(3))
    torch.manual_seed(5)
    out, lse, s_dmask = flash_attn_func(q, k, v, dropout_p=p, return_attn_probs=True)
    torch.manual_seed(5)
    out2 = flash_attn_func(q, k, v, dropout_p=p)
    assert torch.equal(out, out2)
    assert not torch.equal(flash_attn_func(q, k, v, dropout_p=p), out)  # the generator moved on
    keep = dropout_keep(s_dmask, 200, 200).cpu()
    frac = 1.0 - keep.float().mean().item()
    assert abs(frac - p) <= 0.01, frac
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), g)
    refs = {}
    for upcast in (True, False):
        leaves = [t.detach().cpu().requires_grad_() for t in (q, k, v)]
        r_out, _, _ = attention_ref(*leaves, keep=keep, dropout_p=p, upcast=upcast)
        refs[upcast] = (r_out, torch.autograd.grad(r_out, leaves, g.cpu().to(r_out.dtype)))
    assert_rule("out", out, refs[True][0], refs[False][0], FWD_FACTOR)
    for name, ours, ref, base in zip(("dq", "dk", "dv"), grads, refs[True][1], refs[False][1]):
        assert_rule(name, ours, ref, base, BWD_FACTOR)


def test_cuda_graph_capture_and_replay():
    q, k, v = (torch.randn(2, 128, 4, 64, dtype=torch.bfloat16, device=CUDA) for _ in range(3))
    flash_attn_func(q, k, v, causal=True)  # warm up (JIT, context) outside the capture
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        flash_attn_func(q, k, v, causal=True)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = flash_attn_func(q, k, v, causal=True)
    for _ in range(2):
        for t in (q, k, v):
            t.copy_(torch.randn_like(t))
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(static_out, flash_attn_func(q, k, v, causal=True))


def test_cuda_graph_capture_of_varlen_forward_backward():
    """A whole varlen training step (forward + backward) captured and replayed: no host sync."""
    cu = torch.tensor([0, 50, 120], dtype=torch.int32, device=CUDA)
    q, k, v = (torch.randn(120, 4, 64, dtype=torch.float16, device=CUDA, requires_grad=True) for _ in range(3))
    g = torch.randn(120, 4, 64, dtype=torch.float16, device=CUDA)

    def step():
        out = flash_attn_varlen_func(q, k, v, cu, cu, 70, 70, causal=True)
        return torch.autograd.grad(out, (q, k, v), g)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_grads = step()
    with torch.no_grad():
        for t in (q, k, v, g):
            t.copy_(torch.randn_like(t))
    graph.replay()
    torch.cuda.synchronize()
    for a, b in zip(static_grads, step()):
        assert torch.equal(a, b)


def test_side_stream():
    q, k, v = (torch.randn(1, 300, 2, 128, dtype=torch.float16, device=CUDA) for _ in range(3))
    expected = flash_attn_func(q, k, v)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        out = flash_attn_func(q, k, v)
    torch.cuda.current_stream().wait_stream(stream)
    assert torch.equal(out, expected)


def test_compile_fullgraph_on_cuda():
    torch._dynamo.reset()

    def step(q, k, v):
        return flash_attn_func(q, k, v, causal=True).float().square().sum()

    q, k, v = (torch.randn(2, 64, 4, 32, dtype=torch.float16, device=CUDA, requires_grad=True) for _ in range(3))
    grads = torch.autograd.grad(torch.compile(step, fullgraph=True, backend="aot_eager")(q, k, v), (q, k, v))
    ref = torch.autograd.grad(step(q, k, v), (q, k, v))
    for a, b in zip(grads, ref):
        assert torch.equal(a, b)


def test_strided_equals_contiguous():
    base = torch.randn(2, 6, 70, 64, dtype=torch.float16, device=CUDA)
    q, k, v = base[:, :4].transpose(1, 2), base[:, 4:5].transpose(1, 2), base[:, 5:].transpose(1, 2)
    assert torch.equal(flash_attn_func(q, k, v), flash_attn_func(q.contiguous(), k.contiguous(), v.contiguous()))


def test_varlen_and_kvcache_on_cuda_run_without_host_sync_inputs():
    lens = torch.tensor([0, 30, 77], dtype=torch.int32, device=CUDA)  # cu_seqlens: lengths 30 and 47
    q = torch.randn(77, 2, 64, dtype=torch.float16, device=CUDA)
    out = flash_attn_varlen_func(q, q, q, lens, lens, 47, 47, causal=True)
    assert out.shape == q.shape and not torch.isnan(out).any()
    cache = torch.zeros(2, 64, 2, 64, dtype=torch.float16, device=CUDA)
    new = torch.randn(2, 1, 2, 64, dtype=torch.float16, device=CUDA)
    seqlens = torch.tensor([3, 10], dtype=torch.int32, device=CUDA)
    out = flash_attn_with_kvcache(new, cache, cache.clone(), k=new, v=new, cache_seqlens=seqlens, causal=True)
    assert torch.equal(cache[0, 3], new[0, 0]) and torch.equal(cache[1, 10], new[1, 0])


def test_device_checks():
    q = torch.randn(1, 8, 2, 32, dtype=torch.float16, device=CUDA)
    with pytest.raises(_lib.InvalidArgumentError, match=r"\bk\b is on cpu"):
        from flash_attn.flash_attn_interface import flash_attn_gpu

        flash_attn_gpu.fwd(q, q.cpu(), q, None, None, 0.0, 0.2, False, -1, -1, 0.0, False, None)


def test_forced_cpu_backend_refuses_cuda_tensors(monkeypatch):
    monkeypatch.setenv("FLASH_ATTENTION_BACKEND", "cpu")
    q = torch.randn(1, 8, 2, 32, dtype=torch.float16, device=CUDA)
    with pytest.raises(_lib.InvalidArgumentError, match="FLASH_ATTENTION_BACKEND"):
        flash_attn_func(q, q, q)
