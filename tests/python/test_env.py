"""`python -m flash_attn` (environment report, precompile), thread settings and the
FLASH_ATTENTION_USE_FLAGGEMS switch."""

import os
import subprocess
import sys
import warnings

import pytest
import torch

from flash_attn import _engine, _flaggems, flash_attn_func


def _run(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "flash_attn", *args],
        capture_output=True,
        text=True,
        env=dict(os.environ, **(env or {})),
        timeout=120,
    )


def test_environment_report():
    result = _run()
    assert result.returncode == 0, result.stderr
    for needle in (
        "flash_attn",
        "2.8.3",
        "libflashattn",
        "backend cpu",
        "available",
        "backend cuda",
        "JIT cache",
        "cpu threads",
        "torch",
    ):
        assert needle in result.stdout, needle


def test_report_without_library_says_why():
    result = _run(env={"FLASHATTN_LIBRARY": "/nonexistent/libflashattn.so"})
    assert result.returncode == 1 and "NOT LOADED" in result.stdout and "/nonexistent" in result.stdout


def test_precompile_reports_clearly():
    result = _run("precompile", "--arch", "sm_80")
    if result.returncode == 0:
        assert "sm_80" in result.stdout
    else:
        assert "sm_80: failed: flash_attn" in result.stderr and "FA_ERR_" in result.stderr


def test_unknown_subcommand():
    assert _run("frobnicate").returncode == 2


def test_threads_follow_torch_and_env(monkeypatch):
    monkeypatch.delenv("FLASHATTN_NUM_THREADS", raising=False)
    assert _engine.cpu_num_threads() == torch.get_num_threads()
    monkeypatch.setenv("FLASHATTN_NUM_THREADS", "1")
    q = torch.randn(1, 16, 2, 32)
    flash_attn_func(q, q, q)
    assert _engine.context(q.device).num_threads() == 1
    monkeypatch.delenv("FLASHATTN_NUM_THREADS")
    flash_attn_func(q, q, q)
    assert _engine.context(q.device).num_threads() == torch.get_num_threads()


def test_flaggems_switch_warns_once_and_runs_our_kernels(monkeypatch):
    monkeypatch.setenv("FLASH_ATTENTION_USE_FLAGGEMS", "TRUE")
    monkeypatch.setattr(_flaggems, "_state", {"module": None, "error": None, "tried": False})
    monkeypatch.setattr(_flaggems, "_warned", set())
    monkeypatch.setitem(sys.modules, "flag_gems", None)  # FlagGems not importable
    q = torch.randn(1, 16, 2, 32)
    with pytest.warns(RuntimeWarning, match="FlagGems cannot be imported"):
        out = flash_attn_func(q, q, q)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(flash_attn_func(q, q, q), out)  # no second warning
    assert "unusable" in _flaggems.status()
    monkeypatch.setenv("FLASH_ATTENTION_USE_FLAGGEMS", "0")
    assert _flaggems.status().startswith("off")


def test_flaggems_routes_cuda_dense_forward(monkeypatch):
    """With a stand-in FlagGems module, qualifying calls go to it and others do not."""
    seen = []

    class FakeAttention:
        @staticmethod
        def flash_attention_forward(**kw):
            seen.append(kw)
            q = kw["query"]
            return torch.zeros_like(q), torch.zeros(q.shape[0], q.shape[2], q.shape[1])

    monkeypatch.setenv("FLASH_ATTENTION_USE_FLAGGEMS", "true")
    monkeypatch.setattr(_flaggems, "_state", {"module": FakeAttention, "error": None, "tried": True})
    monkeypatch.setattr(_flaggems, "_warned", set())
    q = torch.randn(1, 8, 2, 40, dtype=torch.float16)
    with pytest.warns(RuntimeWarning, match="tensors on cpu"):
        assert _flaggems.maybe_forward(q, q, q, 0.0, 0.1, True, -1, -1, 0.0, None, False) is None
    monkeypatch.setattr(torch.Tensor, "device", property(lambda self: torch.device("cuda", 0)))
    out, lse = _flaggems.maybe_forward(q, q, q, 0.0, 0.1, True, -1, -1, 0.0, None, False)
    assert seen and seen[0]["query"].shape[-1] == 64 and out.shape == q.shape  # d 40 padded to 64, sliced back
    assert seen[0]["is_causal"] is True and seen[0]["scale"] == 0.1
    with pytest.warns(RuntimeWarning, match="dropout"):  # dropout: our kernels (FlagGems' mask differs)
        assert _flaggems.maybe_forward(q, q, q, 0.1, 0.1, True, -1, -1, 0.0, None, False) is None
