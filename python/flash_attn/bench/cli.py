"""`python -m flash_attn bench`: run a named suite, print a table, write JSON and a PNG.

Examples:
    python -m flash_attn bench --suite quick                     # small, CPU-friendly
    python -m flash_attn bench --suite fwd --device cuda --out results
    python -m flash_attn bench --suite cpu --dtypes bf16 --head-dims 128 --seqlens 1024,4096
    python -m flash_attn bench --replot results/fwd.json          # table + PNG again
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import sys

from . import suites


def _ints(text: str) -> tuple:
    return tuple(int(t) for t in text.split(",") if t)


def _dtypes(text: str) -> tuple:
    try:
        return tuple(suites.DTYPE_ALIASES[t.strip().lower()] for t in text.split(",") if t)
    except KeyError as e:
        raise argparse.ArgumentTypeError(f"unknown dtype {e}; use fp32, fp16 or bf16") from None


def _causal(text: str) -> tuple:
    choices = {"both": (False, True), "yes": (True,), "true": (True,), "no": (False,), "false": (False,)}
    if text.lower() not in choices:
        raise argparse.ArgumentTypeError("use both, yes or no")
    return choices[text.lower()]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m flash_attn bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--suite", choices=suites.SUITES, default="quick")
    p.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="auto: cuda when available, else cpu (the cpu suite is always cpu)",
    )
    p.add_argument("--dtypes", type=_dtypes, help="comma list: fp32,fp16,bf16")
    p.add_argument("--head-dims", type=_ints, help="comma list, e.g. 64,128")
    p.add_argument("--seqlens", type=_ints, help="comma list of fwd/bwd sequence lengths")
    p.add_argument("--cache-lens", type=_ints, help="comma list of decode kv cache lengths")
    p.add_argument("--causal", type=_causal, help="both, yes or no")
    p.add_argument("--tokens", type=int, help="batch * seqlen of fwd/bwd cases")
    p.add_argument("--hidden", type=int, help="nheads * head_dim of fwd/bwd cases")
    p.add_argument("--decode-batch", type=int)
    p.add_argument("--decode-heads", type=_ints, help="nheads,nheads_k, e.g. 32,8")
    p.add_argument(
        "--providers",
        type=lambda s: tuple(s.split(",")),
        help="comma list of provider names to run (default: all available)",
    )
    p.add_argument("--threads", type=int, help="CPU threads for every provider (default: torch.get_num_threads())")
    p.add_argument("--warmup-ms", type=float, default=50.0)
    p.add_argument("--rep-ms", type=float, default=200.0)
    p.add_argument("--min-reps", type=int, default=3)
    p.add_argument(
        "--sequential",
        action="store_true",
        help="time providers one after the other instead of in turns (quiet machines; no "
        "interference between providers' CPU thread pools)",
    )
    p.add_argument(
        "--out", default="bench-results", help="folder for <suite>.json, .txt (table), .md (markdown table), .png"
    )
    p.add_argument("--replot", metavar="JSON", help="print the table and redraw the PNG of a run")
    return p


def _grid(args, suite: str, device: str) -> suites.Grid:
    grid = suites.default_grid(suite, device)
    overrides = {
        "dtypes": args.dtypes,
        "head_dims": args.head_dims,
        "seqlens": args.seqlens,
        "cache_lens": args.cache_lens,
        "causal": args.causal,
        "tokens": args.tokens,
        "hidden": args.hidden,
        "decode_batch": args.decode_batch,
        "decode_heads": args.decode_heads,
    }
    return dataclasses.replace(grid, **{k: v for k, v in overrides.items() if v is not None})


def _finish(doc: dict, out: str) -> None:
    from . import plot, report

    base = os.path.join(out, doc["suite"])
    doc["summary"] = report.summary(doc)
    report.write_json(doc, base + ".json")
    text = report.table(doc)
    with open(base + ".txt", "w") as f:
        f.write(text + "\n")
    with open(base + ".md", "w") as f:
        f.write(report.table(doc, markdown=True) + "\n")
    print(f"\nsuite {doc['suite']} on {doc['device']}\n{text}")
    note = plot.plot(doc, base + ".png")
    print(f"wrote {base}.json, .txt, .md" + (f"; {note}" if note else ", .png"))


def run_suite(args, suite: str, device: str, threads: int, argv: list) -> dict:
    from . import providers as prov
    from . import report, runner, timing

    usable, skipped = prov.select(args.providers, device)
    cases = suites.expand(_grid(args, suite, device))
    budget = timing.Budget(args.warmup_ms / 1e3, args.rep_ms / 1e3, args.min_reps, interleave=not args.sequential)
    doc = {
        "schema": runner.SCHEMA,
        "suite": suite,
        "device": device,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "provenance": report.provenance(device, usable, threads, argv),
        "method": runner.method(device, budget, threads),
        "providers": [{"name": p.name, "available": True, "reason": None, "version": p.version()} for p in usable]
        + [{"name": n, "available": False, "reason": r, "version": None} for n, r in skipped.items()],
        "cases": [c.as_dict() for c in cases],
        "copy_bandwidth_gbps": None,
        "results": [],
    }
    path = os.path.join(args.out, suite + ".json")

    def save(rows, copy_bw):  # after each case, so a killed run keeps what it measured
        doc["results"], doc["copy_bandwidth_gbps"] = rows, copy_bw and copy_bw / 1e9
        report.write_json(doc, path)

    progress = runner.Progress(len(cases) * len(usable), suite)
    rows, copy_bw = runner.run_cases(cases, usable, device, budget, progress, save)
    progress.close()
    save(rows, copy_bw)
    return doc


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    if args.replot:
        with open(args.replot) as f:
            doc = json.load(f)
        _finish(doc, os.path.dirname(os.path.abspath(args.replot)))
        return 0
    import torch

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    threads = args.threads or int(os.environ.get("FLASHATTN_NUM_THREADS") or 0) or torch.get_num_threads()
    torch.set_num_threads(threads)  # the same count for torch and for our library
    os.environ["FLASHATTN_NUM_THREADS"] = str(threads)
    os.makedirs(args.out, exist_ok=True)
    for suite in suites.sub_suites(args.suite):
        doc = run_suite(args, suite, suites.suite_device(suite, device), threads, argv)
        _finish(doc, args.out)
    return 0
