"""Benchmark cases and the named suites (quick, fwd, bwd, decode, cpu, all).

A case is one attention problem in flash-attn's layout (batch, seqlen, nheads, headdim). Shapes
follow flash-attn's benchmark convention on the GPU (batch = 16384 / seqlen, nheads = 2048 / d)
and a smaller fixed token count on the CPU, so every point of a sweep does the same work per
token and only the sequence length changes.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass

SUITES = ("quick", "fwd", "bwd", "decode", "cpu", "all")
OPS = ("fwd", "fwd_bwd", "decode")
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
DTYPE_ALIASES = {
    "fp32": "float32",
    "f32": "float32",
    "float32": "float32",
    "fp16": "float16",
    "f16": "float16",
    "float16": "float16",
    "half": "float16",
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
}
BWD_FLOPS_FACTOR = 2.5  # backward = 2.5x forward (flash-attn's convention)


@dataclass(frozen=True)
class Case:
    op: str  # "fwd" | "fwd_bwd" | "decode"
    dtype: str  # torch dtype name: "float32" | "float16" | "bfloat16"
    head_dim: int
    seqlen_q: int
    seqlen_k: int
    batch: int
    nheads: int
    nheads_k: int
    causal: bool

    @property
    def label(self) -> str:
        mask = " causal" if self.causal else ""
        if self.op == "decode":
            return (
                f"decode {self.dtype} d{self.head_dim} b{self.batch} "
                f"h{self.nheads}/{self.nheads_k} cache{self.seqlen_k}"
            )
        return f"{self.op} {self.dtype} d{self.head_dim} s{self.seqlen_q}{mask}"

    def flops(self) -> float:
        """4*b*h*sq*sk*d for the forward, halved when causal; fwd+bwd adds 2.5x that."""
        f = 4.0 * self.batch * self.nheads * self.seqlen_q * self.seqlen_k * self.head_dim
        if self.causal:
            f /= 2
        return f * (1 + BWD_FLOPS_FACTOR) if self.op == "fwd_bwd" else f

    def kv_bytes(self) -> int:
        """Bytes of K and V one call must read: the decode metric."""
        return 2 * self.batch * self.seqlen_k * self.nheads_k * self.head_dim * DTYPE_BYTES[self.dtype]

    def io_bytes(self) -> int:
        """Bytes of all inputs and outputs of one call (decides input rotation)."""
        e = DTYPE_BYTES[self.dtype]
        q = self.batch * self.seqlen_q * self.nheads * self.head_dim * e
        n = 2 * q + self.kv_bytes()  # q, out, k, v
        return 2 * n if self.op == "fwd_bwd" else n  # + dout, dq, dk, dv

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Grid:
    """What a suite sweeps; every field can be overridden from the command line."""

    ops: tuple
    dtypes: tuple
    head_dims: tuple
    seqlens: tuple
    causal: tuple
    tokens: int  # batch * seqlen for fwd / fwd_bwd
    hidden: int  # nheads * head_dim for fwd / fwd_bwd
    cache_lens: tuple = (1024, 4096, 16384)  # kv cache lengths for decode
    decode_batch: int = 1
    decode_heads: tuple = (32, 8)  # (nheads, nheads_k): GQA 4:1


def default_grid(suite: str, device: str) -> Grid:
    gpu = device == "cuda"
    if suite == "quick":
        if gpu:
            return Grid(
                ("fwd", "fwd_bwd", "decode"),
                ("bfloat16",),
                (128,),
                (1024, 4096),
                (False, True),
                16384,
                2048,
                (4096, 16384),
                4,
                (32, 8),
            )
        return Grid(
            ("fwd", "fwd_bwd", "decode"),
            ("float32",),
            (64,),
            (128, 256),
            (False, True),
            512,
            256,
            (4096, 16384),
            1,
            (8, 2),
        )
    ops = {"fwd": ("fwd",), "bwd": ("fwd_bwd",), "decode": ("decode",), "cpu": ("fwd", "fwd_bwd", "decode")}[suite]
    if gpu and suite != "cpu":
        # bwd: d128 only, as the peer table; flex_attention compiles once per shape and op
        return Grid(
            ops,
            ("bfloat16",),
            (128,) if suite == "bwd" else (64, 128),
            (512, 1024, 2048, 4096, 8192, 16384),
            (False, True),
            16384,
            2048,
            (2048, 4096, 8192, 16384, 32768, 65536),
            8,
        )
    return Grid(
        ops,
        ("float32", "bfloat16"),
        (64, 128),
        (512, 1024, 2048, 4096),
        (False, True),
        4096,
        256,
        (1024, 4096, 16384),
        1,
    )


def expand(grid: Grid) -> list:
    """All cases of a grid, in a stable order (op, dtype, d, causal, seqlen)."""
    cases = []
    for op, dtype, d in itertools.product(grid.ops, grid.dtypes, grid.head_dims):
        if op == "decode":
            h, hk = grid.decode_heads
            cases += [Case(op, dtype, d, 1, s, grid.decode_batch, h, hk, False) for s in grid.cache_lens]
            continue
        for causal, s in itertools.product(grid.causal, grid.seqlens):
            batch = max(1, grid.tokens // s)
            heads = max(1, grid.hidden // d)
            cases.append(Case(op, dtype, d, s, s, batch, heads, heads, causal))
    return cases


def suite_device(suite: str, device: str) -> str:
    """The cpu suite always runs on the CPU; the others on the chosen device."""
    return "cpu" if suite == "cpu" else device


def sub_suites(suite: str) -> tuple:
    return ("fwd", "bwd", "decode") if suite == "all" else (suite,)
