"""What a run leaves behind: provenance, the results table, the JSON file and the PNG plot."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
from collections import OrderedDict

import torch

from .providers import OURS


def _run(cmd: list, cwd=None):
    try:
        out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _git() -> dict:
    """The checkout's commit; a copy without .git (e.g. on a lent machine) can pass FA_GIT_COMMIT."""
    here = os.path.dirname(os.path.abspath(__file__))
    commit = _run(["git", "rev-parse", "HEAD"], cwd=here)
    if commit is None and os.environ.get("FA_GIT_COMMIT"):
        return {"commit": os.environ["FA_GIT_COMMIT"], "dirty": None, "source": "FA_GIT_COMMIT"}
    dirty = _run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here)
    return {"commit": commit, "dirty": bool(dirty) if dirty is not None else None, "source": "git"}


def _cpu() -> dict:
    model, flags = None, set()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name") and model is None:
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    isa = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16") if f in flags]
    return {"model": model or platform.processor(), "logical_cores": os.cpu_count(), "isa": isa}


def _gpu() -> dict:
    p = torch.cuda.get_device_properties(0)
    driver = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
    return {
        "name": p.name,
        "capability": f"{p.major}.{p.minor}",
        "multiprocessors": p.multi_processor_count,
        "memory_bytes": p.total_memory,
        "l2_bytes": getattr(p, "L2_cache_size", None),
        "driver": driver.splitlines()[0] if driver else None,
        "cuda_runtime": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
    }


def _versions(providers: list) -> dict:
    v = {"python": platform.python_version(), "torch": torch.__version__}
    for mod in ("numpy", "triton", "matplotlib", "tqdm"):
        m = sys.modules.get(mod)
        if m is None:
            try:
                m = __import__(mod)
            except ImportError:
                continue
        v[mod] = getattr(m, "__version__", None)
    try:
        import flash_attn

        v["flash_attn"] = getattr(flash_attn, "__version__", None)
        v["flash_attn_plus"] = getattr(flash_attn, "__plus_version__", None)
    except Exception as e:  # noqa: BLE001
        v["flash_attn"] = f"import failed: {type(e).__name__}"
    for p in providers:
        v[f"provider:{p.name}"] = p.version()
    return v


def _loadavg():
    """1/5/15-minute load: other work on the machine makes CPU numbers noisy."""
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def _library() -> dict:
    """Which libflashattn the package loaded: an old build in a fresh tree is easy to miss."""
    try:
        from flash_attn import _lib

        path = _lib.lib().path  # the file actually loaded
    except Exception:  # noqa: BLE001 - not loadable: say where it was looked for
        path = os.environ.get("FLASHATTN_LIBRARY")
    if not path or not os.path.exists(path):
        return {"path": path}
    st = os.stat(path)
    mtime = datetime.datetime.fromtimestamp(st.st_mtime, datetime.timezone.utc).isoformat()
    return {"path": path, "bytes": st.st_size, "modified_utc": mtime}


def provenance(device: str, providers: list, threads: int, argv: list) -> dict:
    env = {
        k: os.environ[k]
        for k in ("FLASHATTN_LIBRARY", "FLASHATTN_NUM_THREADS", "FLASH_ATTENTION_BACKEND", "CUDA_VISIBLE_DEVICES")
        if k in os.environ
    }
    return {
        "device": device,
        "gpu": _gpu() if device == "cuda" else None,
        "cpu": _cpu(),
        "cpu_threads": threads,
        "load_average_at_start": _loadavg(),
        "host": platform.platform(),
        "versions": _versions(providers),
        "git": _git(),
        "library": _library(),
        "command": ["python", "-m", "flash_attn", "bench"] + list(argv),
        "env": env,
    }


def write_json(doc: dict, path: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1, default=str)
    os.replace(tmp, path)


# ---------------------------------------------------------------- table


def metric(row: dict):
    """The number a row is judged by: TFLOPS, or GB/s of K+V for decode; None unless ok."""
    if row.get("status") != "ok":
        return None
    return row["kv_gbps"] if row["op"] == "decode" else row["tflops"]


CASE_KEYS = ("op", "dtype", "head_dim", "seqlen_q", "seqlen_k", "batch", "nheads", "nheads_k", "causal")


def by_case(rows: list) -> "OrderedDict":
    cases = OrderedDict()
    for r in rows:
        cases.setdefault(tuple(r[k] for k in CASE_KEYS), {})[r["provider"]] = r
    return cases


def ratio_to_best_peer(per_provider: dict):
    ours = metric(per_provider.get(OURS, {}))
    peers = [metric(r) for name, r in per_provider.items() if name != OURS]
    peers = [p for p in peers if p]
    return ours / max(peers) if ours and peers else None


def summary(doc: dict) -> list:
    """Per case: our metric, the best peer and its metric, and their ratio."""
    out = []
    for key, per in by_case(doc["results"]).items():
        peers = [(metric(r), n) for n, r in per.items() if n != OURS and metric(r)]
        best = max(peers) if peers else (None, None)
        out.append(
            {
                **dict(zip(CASE_KEYS, key)),
                "unit": "GB/s" if key[0] == "decode" else "TFLOPS",
                "ours": metric(per.get(OURS, {})),
                "best_peer": best[1],
                "best_peer_value": best[0],
                "ratio": ratio_to_best_peer(per),
            }
        )
    return out


def _cell(row, scale: float) -> str:
    if row is None:
        return "-"
    status = row.get("status")
    if status == "ok":
        return f"{metric(row) * scale:.3g}"
    return {"wrong": "WRONG", "unsupported": "n/a", "error": "ERR"}.get(status, "?")


def flops_unit(doc: dict) -> tuple:
    """(name, factor from TFLOPS): GFLOPS reads better for CPU numbers."""
    return ("GFLOPS", 1e3) if doc["device"] == "cpu" else ("TFLOPS", 1.0)


def _case_label(case: dict) -> str:
    head = f"{case['op']} {case['dtype']} d{case['head_dim']} "
    if case["op"] == "decode":
        return head + f"b{case['batch']} h{case['nheads']}/{case['nheads_k']} sk{case['seqlen_k']}"
    return head + f"b{case['batch']} h{case['nheads']} s{case['seqlen_q']}" + (" causal" if case["causal"] else "")


def table(doc: dict, markdown: bool = False) -> str:
    """One line per case, one column per provider, plus ours / best peer; text or markdown."""
    names = [p["name"] for p in doc["providers"] if p["available"]]
    unit, scale = flops_unit(doc)
    head = ["case", "unit"] + names + ["ours/best"]
    lines = []
    for key, per in by_case(doc["results"]).items():
        case = dict(zip(CASE_KEYS, key))
        decode = case["op"] == "decode"
        ratio = ratio_to_best_peer(per)
        lines.append(
            [_case_label(case), "GB/s" if decode else unit]
            + [_cell(per.get(n), 1.0 if decode else scale) for n in names]
            + [f"{ratio:.2f}" if ratio else "-"]
        )
    if markdown:
        out = ["| " + " | ".join(r) + " |" for r in [head, ["---"] * len(head)] + lines]
    else:
        widths = [max(len(str(r[i])) for r in [head] + lines) for i in range(len(head))]
        fmt = "  ".join("{:<%d}" % w if i == 0 else "{:>%d}" % w for i, w in enumerate(widths))
        out = [fmt.format(*r) for r in [head, ["-" * w for w in widths]] + lines]
    notes = [("- " if markdown else "") + n for n in _notes(doc)]
    return "\n".join(out + ([""] + notes if notes else []))


def _notes(doc: dict) -> list:
    notes = [f"not run: {p['name']}: {p['reason']}" for p in doc["providers"] if not p["available"]]
    for r in doc["results"]:
        if r.get("status") in ("wrong", "error"):
            errs = r.get("check", {}).get("errors", {})
            detail = "; ".join(
                f"{k} err {e['max_abs']:.3g} > tol {e['tol']:.3g}" for k, e in errs.items() if not e["ok"]
            )
            notes.append(
                f"{r['status'].upper()}: {r['provider']} on {r['op']} {r['dtype']} "
                f"d{r['head_dim']} s{r['seqlen_q']}/{r['seqlen_k']}"
                f"{' causal' if r['causal'] else ''}: {detail or r.get('message', '')}"
            )
    if doc.get("copy_bandwidth_gbps"):
        notes.append(f"memory copy bandwidth (read+write): {doc['copy_bandwidth_gbps']:.1f} GB/s")
    return notes
