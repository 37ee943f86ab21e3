"""`python -m flash_attn bench --suite quick` on the CPU: runtime, JSON schema, PNG, and the
correctness gate that keeps a wrong provider from being timed."""

import json
import os
import subprocess
import sys
import time

import pytest
import torch

from flash_attn.bench import check, runner, suites, timing
from flash_attn.bench.providers import OURS, Provider, Sdpa

CASE_KEYS = ("op", "dtype", "head_dim", "seqlen_q", "seqlen_k", "batch", "nheads", "nheads_k", "causal")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    main = os.path.join(os.path.dirname(check.__file__), "..", "__main__.py")
    module = ["flash_attn", "bench"] if os.path.exists(main) else ["flash_attn.bench"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", *module, "--suite", "quick", "--device", "cpu", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return out, seconds, proc.stdout


def test_quick_under_two_minutes(quick_run):
    _, seconds, _ = quick_run
    assert seconds < 120, f"quick suite took {seconds:.0f} s"


def test_json_schema(quick_run):
    out, _, _ = quick_run
    doc = json.load(open(out / "quick.json"))
    assert doc["schema"] == runner.SCHEMA and doc["suite"] == "quick" and doc["device"] == "cpu"
    prov = doc["provenance"]
    for key in ("device", "cpu", "cpu_threads", "host", "versions", "git", "library", "command", "env"):
        assert key in prov, key
    assert prov["versions"]["torch"] == torch.__version__
    assert prov["cpu_threads"] >= 1 and prov["command"][:4] == ["python", "-m", "flash_attn", "bench"]
    assert "commit" in prov["git"]
    for key in ("statistic", "timer", "budget", "input_rotation", "flops", "check"):
        assert doc["method"][key], key
    names = {p["name"] for p in doc["providers"]}
    assert {OURS, "sdpa-cpu"} <= names
    for p in doc["providers"]:
        assert p["available"] == (p["reason"] is None), p
    available = [p["name"] for p in doc["providers"] if p["available"]]
    assert "sdpa-cpu" in available
    cases = {tuple(c[k] for k in CASE_KEYS) for c in doc["cases"]}
    assert {c["op"] for c in doc["cases"]} == {"fwd", "fwd_bwd", "decode"}
    seen = {(tuple(r[k] for k in CASE_KEYS), r["provider"]) for r in doc["results"]}
    assert seen == {(c, n) for c in cases for n in available}  # every provider on every case
    for r in doc["results"]:
        assert r["status"] in runner.STATUSES, r
        if r["status"] == "ok":
            assert r["check"]["ok"] and r["time_ms"] > 0 and r["tflops"] > 0
            assert r["reps"] == len(r["times_ms"]) >= 3
            if r["op"] == "decode":
                assert r["kv_gbps"] > 0 and 0 < r["kv_fraction_of_copy_bw"]
        elif r["status"] == "wrong":
            assert not r["check"]["ok"] and "time_ms" not in r
        if r["provider"] == "sdpa-cpu":
            assert r["status"] == "ok", r  # torch's own kernel must pass its own check
    assert doc["copy_bandwidth_gbps"] > 0
    assert len(doc["summary"]) == len(cases)
    for s in doc["summary"]:
        assert s["best_peer"] is not None and s["best_peer_value"] > 0
        assert (s["ratio"] is None) == (s["ours"] is None)


def test_table_written(quick_run):
    out, _, stdout = quick_run
    text = (out / "quick.txt").read_text()
    assert "sdpa-cpu" in text and "ours/best" in text and "GFLOPS" in text and "GB/s" in text
    assert text.splitlines()[0] in stdout


def test_png_decodes(quick_run):
    pytest.importorskip("matplotlib")
    import matplotlib.image

    out, _, _ = quick_run
    img = matplotlib.image.imread(out / "quick.png")
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 200
    assert img.std() > 0  # not a blank canvas


class _Broken(Provider):
    name = "broken"

    def fwd(self, q, k, v, causal):
        out = Sdpa(None, devices=("cpu",))
        out._load("cpu")
        return out.fwd(q, k, v, causal) * 1.01  # 1% off: far outside the 2x rule


@pytest.mark.parametrize("op", ["fwd", "fwd_bwd"])
def test_wrong_provider_is_reported_not_timed(op):
    case = suites.Case(op, "float32", 40, 37, 37, 2, 4, 2, True)
    x = check.make_inputs(case, "cpu", seed=0)
    ref = check.Reference(case, x)
    good = Sdpa(None, devices=("cpu",))
    assert good.availability("cpu") is None
    bad, ok = runner.run_case(case, [_Broken(), good], [x], ref, "cpu", timing.Budget(0.0, 0.0), None)
    assert bad["status"] == "wrong" and "time_ms" not in bad
    assert not bad["check"]["errors"]["out"]["ok"]
    assert ok["status"] == "ok" and ok["check"]["ok"] and ok["time_ms"] > 0 and ok["reps"] >= 3


def test_nan_fails_the_check():
    case = suites.Case("fwd", "bfloat16", 16, 9, 9, 1, 2, 2, False)
    x = check.make_inputs(case, "cpu", seed=1)
    ref = check.Reference(case, x)
    good = check.attention_plain(x.q.float(), x.k.float(), x.v.float(), False).to(x.q.dtype)
    assert ref.check((good,))["ok"]
    good[0, 3, 0, 5] = float("nan")
    assert not ref.check((good,))["ok"]


def test_flops_and_bytes():
    c = suites.Case("fwd", "bfloat16", 128, 1024, 1024, 2, 16, 16, False)
    assert c.flops() == 4 * 2 * 16 * 1024 * 1024 * 128
    assert suites.Case(**{**c.as_dict(), "causal": True}).flops() == c.flops() / 2
    assert suites.Case(**{**c.as_dict(), "op": "fwd_bwd"}).flops() == 3.5 * c.flops()
    d = suites.Case("decode", "float32", 128, 1, 4096, 3, 32, 8, False)
    assert d.kv_bytes() == 2 * 3 * 4096 * 8 * 128 * 4
    assert timing.rotation_sets(1 << 20, 32 << 20) == 64 and timing.rotation_sets(64 << 20, 32 << 20) == 1


def test_without_optional_extras(monkeypatch, capsys, tmp_path):
    """No tqdm: plain progress lines; no matplotlib: no PNG, and a note says why."""
    from flash_attn.bench import plot

    monkeypatch.setitem(sys.modules, "tqdm", None)  # import fails with ImportError
    progress = runner.Progress(2, "quick")
    progress.step("fwd float32 d64 s128: sdpa-cpu")
    progress.close()
    assert "[quick 1/2] fwd float32 d64 s128: sdpa-cpu" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    note = plot.plot({"results": []}, str(tmp_path / "x.png"))
    assert "matplotlib" in note and not (tmp_path / "x.png").exists()


def test_interleaved_timing_takes_turns_and_isolates_failures():
    order = []

    def fails_later():
        order.append("b")
        if len(order) > 6:
            raise RuntimeError("boom")

    times = timing.measure_interleaved(
        [[lambda: order.append("a")], [fails_later]], "cpu", timing.Budget(0.0, 0.0, min_reps=4)
    )
    assert isinstance(times[1], RuntimeError) and len(times[0]) == 4
    assert "".join(order[4:8]) == "abab"  # after 2 warm-up calls each, timed calls alternate
