"""Benchmarks of flash_attn against its peers: `python -m flash_attn bench --help`.

Pure Python over torch; tqdm (progress bar) and matplotlib (PNG plot) are optional.
"""

from .cli import main

__all__ = ["main"]
