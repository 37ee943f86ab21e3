"""Attention implementations the benchmark compares, each behind one small interface.

Tensors are in flash-attn's layout (batch, seqlen, nheads, headdim); providers with another
layout transpose views. A provider says why it is unavailable instead of failing later.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import importlib.util
import os
import sys

import torch

OURS = "flash-attn-plus"
MATH_MAX_BYTES = 16 << 30
FLEX_SEQLENS = (1024, 4096, 16384, 65536)


class Provider:
    name = "?"
    devices = ("cpu", "cuda")
    ops = ("fwd", "fwd_bwd", "decode")

    def availability(self, device: str):
        """None when usable on device, else the reason why not."""
        if device not in self.devices:
            return f"not run on {device}"
        return self._load(device)

    def _load(self, device: str):
        return None

    def supports(self, case):
        """None when the case can run, else the reason why not."""
        return None if case.op in self.ops else f"{case.op} not provided"

    def version(self):
        return None

    def fwd(self, q, k, v, causal: bool):
        raise NotImplementedError

    def decode(self, q, k_cache, v_cache):
        return self.fwd(q, k_cache, v_cache, False)


class FlashAttnPlus(Provider):
    """This repository's package: flash_attn_func / flash_attn_with_kvcache over libflashattn."""

    name = OURS

    def _load(self, device):
        try:
            self.fa = importlib.import_module("flash_attn")
            dtype = torch.bfloat16 if device == "cuda" else torch.float32
            q = torch.zeros(1, 4, 1, 8, device=device, dtype=dtype)
            self.fa.flash_attn_func(q, q, q)
        except Exception as e:  # noqa: BLE001 - any failure makes the provider unavailable
            return f"{type(e).__name__}: {e}"
        return None

    def version(self):
        fa = getattr(self, "fa", None)
        return getattr(fa, "__plus_version__", getattr(fa, "__version__", None))

    def fwd(self, q, k, v, causal):
        return self.fa.flash_attn_func(q, k, v, causal=causal)

    def decode(self, q, k_cache, v_cache):
        return self.fa.flash_attn_with_kvcache(q, k_cache, v_cache)


class Sdpa(Provider):
    """torch.nn.functional.scaled_dot_product_attention, one backend forced (or torch's choice)."""

    def __init__(self, backend: str | None, devices=("cuda",)):
        self.backend = backend
        self.devices = devices
        self.name = f"sdpa-{backend.split('_')[0].lower()}" if backend else "sdpa-cpu"

    def _load(self, device):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        if self.backend:
            self.ctx = lambda: sdpa_kernel(getattr(SDPBackend, self.backend))
        else:
            self.ctx = contextlib.nullcontext
        return None

    def supports(self, case):
        # The math backend materialises (b, h, s_q, s_k) scores; skip what would not fit.
        passes = 3 if case.op == "fwd_bwd" else 1
        need = passes * case.batch * case.nheads * case.seqlen_q * case.seqlen_k * 4
        if self.backend == "MATH" and need > MATH_MAX_BYTES:
            return f"skipped: needs ~{need / 2**30:.0f} GiB of scores"
        return super().supports(case)

    def version(self):
        return torch.__version__

    def fwd(self, q, k, v, causal):
        gqa = q.shape[2] != k.shape[2]
        with self.ctx():
            out = torch.nn.functional.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal, enable_gqa=gqa
            )
        return out.transpose(1, 2)


class Flex(Provider):
    """torch's flex_attention under torch.compile (Triton); one compile per shape."""

    name = "flex_attention"
    devices = ("cuda",)

    def _load(self, device):
        try:
            from torch.nn.attention import flex_attention as fx
        except ImportError as e:
            return f"ImportError: {e}"
        import torch._dynamo

        cfg = torch._dynamo.config
        for knob in ("recompile_limit", "cache_size_limit"):
            if hasattr(cfg, knob):
                setattr(cfg, knob, 256)
        self.fx = fx
        self.compiled = torch.compile(fx.flex_attention, dynamic=False)
        self.masks = {}
        return None

    def supports(self, case):
        # Each new shape costs a compile (seconds to a minute): sample the sweep at 1k, 4k, 16k, 64k.
        if case.seqlen_k not in FLEX_SEQLENS:
            return f"skipped: compiled per shape, run at seqlen {'/'.join(map(str, FLEX_SEQLENS))}"
        return super().supports(case)

    def version(self):
        return torch.__version__

    def _mask(self, sq, sk, device):
        key = (sq, sk, str(device))
        if key not in self.masks:

            def causal(b, h, qi, ki):
                return qi + (sk - sq) >= ki

            self.masks[key] = self.fx.create_block_mask(causal, None, None, sq, sk, device=device)
        return self.masks[key]

    def fwd(self, q, k, v, causal):
        mask = self._mask(q.shape[1], k.shape[1], q.device) if causal else None
        out = self.compiled(
            q.transpose(1, 2),
            k.transpose(1, 2),
            v.transpose(1, 2),
            block_mask=mask,
            enable_gqa=q.shape[2] != k.shape[2],
        )
        return out.transpose(1, 2)


class Upstream(Provider):
    """Upstream flash-attn (Dao-AILab), when installed next to ours.

    Both packages are named flash_attn, so upstream's interface module and its compiled
    flash_attn_2_cuda extension are loaded from its install folder under private names.
    """

    name = "flash-attn-upstream"
    devices = ("cuda",)

    def _load(self, device):
        ours = os.path.dirname(importlib.util.find_spec("flash_attn").origin or "")
        for dist in importlib.metadata.distributions():
            if (dist.metadata["Name"] or "").lower().replace("-", "_") != "flash_attn":
                continue
            files = [str(f) for f in dist.files or ()]
            iface = [f for f in files if f.endswith("flash_attn/flash_attn_interface.py")]
            ext = [
                f for f in files if os.path.basename(f).startswith("flash_attn_2_cuda") and f.endswith((".so", ".pyd"))
            ]
            if not iface or not ext:
                continue
            path = str(dist.locate_file(iface[0]))
            if os.path.dirname(path) == ours:
                continue
            return self._import(path, str(dist.locate_file(ext[0])), dist.version)
        return "not installed"

    def _import(self, iface_path, ext_path, version):
        saved = sys.modules.get("flash_attn_2_cuda")
        try:
            spec = importlib.util.spec_from_file_location("flash_attn_2_cuda", ext_path)
            ext = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(ext)
            sys.modules["flash_attn_2_cuda"] = ext
            spec = importlib.util.spec_from_file_location("_upstream_flash_attn", iface_path)
            self.mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(self.mod)
        except Exception as e:  # noqa: BLE001
            return f"upstream flash-attn {version} failed to load: {type(e).__name__}: {e}"
        finally:
            if saved is None:
                sys.modules.pop("flash_attn_2_cuda", None)
            else:
                sys.modules["flash_attn_2_cuda"] = saved
        self._version = version
        return None

    def version(self):
        return getattr(self, "_version", None)

    def fwd(self, q, k, v, causal):
        return self.mod.flash_attn_func(q, k, v, causal=causal)

    def decode(self, q, k_cache, v_cache):
        return self.mod.flash_attn_with_kvcache(q, k_cache, v_cache)


class FlagGems(Provider):
    """FlagGems' Triton flash_attention_forward (the seed project's backend); forward only."""

    name = "flaggems"
    devices = ("cuda",)
    ops = ("fwd", "decode")

    def _load(self, device):
        saved_argv, saved_test = sys.argv, os.environ.pop("PYTEST_CURRENT_TEST", None)
        os.environ.setdefault("GEMS_VENDOR", "nvidia")
        try:
            sys.argv = sys.argv[:1]  # its dispatcher parses sys.argv at import
            import flag_gems
            from flag_gems.ops.attention import flash_attention_forward
        except Exception as e:  # noqa: BLE001
            return f"not importable: {type(e).__name__}: {e}"
        finally:
            sys.argv = saved_argv
            if saved_test is not None:
                os.environ["PYTEST_CURRENT_TEST"] = saved_test
        libentry = sys.modules.get("flag_gems.utils.libentry")
        if libentry is not None and hasattr(libentry, "minor_version"):
            libentry.minor_version = 5  # pass constexprs at launch under triton 3.6
        self.fwd_fn, self._version = flash_attention_forward, getattr(flag_gems, "__version__", None)
        return None

    def version(self):
        return getattr(self, "_version", None)

    def fwd(self, q, k, v, causal):
        d = q.shape[-1]
        return self.fwd_fn(
            query=q,
            key=k,
            value=v,
            cumulative_sequence_length_q=None,
            cumulative_sequence_length_k=None,
            max_q=q.shape[1],
            max_k=k.shape[1],
            dropout_p=0.0,
            is_causal=causal,
            return_debug_mask=False,
            scale=d**-0.5,
            softcap=0.0,
            window_size_left=None,
            window_size_right=None,
            seqused_k=None,
            alibi_slopes=None,
            disable_splitkv=False,
        )[0]


def all_providers() -> list:
    """Ours first; then the peers in the order of the issue."""
    return [
        FlashAttnPlus(),
        Sdpa("FLASH_ATTENTION"),
        Sdpa("CUDNN_ATTENTION"),
        Sdpa("EFFICIENT_ATTENTION"),
        Sdpa("MATH"),
        Flex(),
        Upstream(),
        FlagGems(),
        Sdpa(None, devices=("cpu",)),
    ]


def select(names, device: str) -> tuple:
    """(usable providers, {name: reason} for the rest), filtered by names when given."""
    usable, skipped = [], {}
    for p in all_providers():
        if names and p.name not in names:
            continue
        reason = p.availability(device)
        if reason is None:
            usable.append(p)
        else:
            skipped[p.name] = reason
    return usable, skipped
