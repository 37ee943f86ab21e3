"""PNG plot of a suite: per configuration, the metric against seqlen with one line per provider,
and below it ours divided by the best peer. matplotlib is optional; without it no PNG."""

from __future__ import annotations

import math
from collections import OrderedDict

from .providers import OURS
from .report import flops_unit, metric, ratio_to_best_peer

COLS = 4


def _configs(rows: list) -> "OrderedDict":
    """{config title: {seqlen: {provider: row}}}; a config is everything but the seqlen."""
    out = OrderedDict()
    for r in rows:
        if r["op"] == "decode":
            title = f"decode {r['dtype']} d{r['head_dim']} b{r['batch']} h{r['nheads']}/{r['nheads_k']}"
            x = r["seqlen_k"]
        else:
            title = f"{r['op']} {r['dtype']} d{r['head_dim']}" + (" causal" if r["causal"] else "")
            x = r["seqlen_q"]
        out.setdefault(title, OrderedDict()).setdefault(x, {})[r["provider"]] = r
    return out


def plot(doc: dict, path: str):
    """Writes the PNG; returns None, or a note saying why no plot was written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no PNG (pip install matplotlib)"
    configs = _configs(doc["results"])
    if not configs:
        return "no results to plot"
    names = [p["name"] for p in doc["providers"] if p["available"]]
    unit, scale = flops_unit(doc)
    ncols = min(COLS, len(configs))
    nrows = math.ceil(len(configs) / ncols)
    fig = plt.figure(figsize=(3.6 * ncols, 3.6 * nrows + 0.6), layout="constrained")
    grid = fig.add_gridspec(2 * nrows, ncols, height_ratios=[3, 1] * nrows)
    handles = {}
    for i, (title, points) in enumerate(configs.items()):
        r, c = divmod(i, ncols)
        top = fig.add_subplot(grid[2 * r, c])
        bottom = fig.add_subplot(grid[2 * r + 1, c], sharex=top)
        xs = list(points)
        decode = title.startswith("decode")
        for name in names:
            ys = [metric(points[x].get(name, {})) for x in xs]
            ys = [y if y is None or decode else y * scale for y in ys]
            if any(y is not None for y in ys):
                style = dict(lw=2.5, color="black") if name == OURS else dict(lw=1.2)
                (line,) = top.plot(
                    xs, [math.nan if y is None else y for y in ys], marker="o", ms=3, label=name, **style
                )
                handles.setdefault(name, line)
            wrong = [x for x in xs if points[x].get(name, {}).get("status") == "wrong"]
            if wrong:  # failed the correctness check: marked, not timed
                mark = top.plot(wrong, [0] * len(wrong), "x", color="red", ms=7, clip_on=False)[0]
                handles.setdefault("failed the check (not timed)", mark)
        ratios = [ratio_to_best_peer(points[x]) for x in xs]
        bottom.plot(xs, [math.nan if y is None else y for y in ratios], marker="o", ms=3, color="black")
        bottom.axhline(1.0, color="gray", lw=0.8, ls="--")
        top.set_ylim(bottom=0)  # honest bars: differences are not magnified
        bottom.set_ylim(bottom=0)
        top.set_title(title, fontsize=9)
        top.set_xscale("log", base=2)
        bottom.set_xticks(xs, [f"{x // 1024}k" if x >= 1024 else str(x) for x in xs])
        bottom.minorticks_off()
        top.set_ylabel("GB/s (K+V)" if decode else unit, fontsize=8)
        bottom.set_ylabel("ours/best", fontsize=8)
        bottom.set_xlabel("kv cache length" if decode else "seqlen", fontsize=8)
        top.tick_params(labelsize=7, labelbottom=False)
        bottom.tick_params(labelsize=7)
        top.grid(alpha=0.3)
        bottom.grid(alpha=0.3)
    dev = doc["provenance"].get("gpu") or doc["provenance"]["cpu"]
    name = dev.get("name") or dev.get("model")
    threads = f", {doc['provenance']['cpu_threads']} threads" if doc["device"] == "cpu" else ""
    fig.suptitle(f"suite {doc['suite']} on {doc['device']} ({name}{threads})", fontsize=11)
    fig.legend(
        list(handles.values()),
        list(handles),
        loc="outside lower center",
        ncol=min(len(handles), 5),
        fontsize=8,
        frameon=False,
    )
    fig.savefig(path, dpi=72)
    plt.close(fig)
    _shrink(path)
    return None


def _shrink(path: str) -> None:
    """Line plots need few colours: a 64-colour palette makes the PNG about 3x smaller."""
    try:
        from PIL import Image
    except ImportError:
        return
    with Image.open(path) as img:
        small = img.convert("RGB").quantize(colors=64, method=Image.Quantize.FASTOCTREE)  # keeps rare reds
    small.save(path, optimize=True)
