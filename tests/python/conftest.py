"""Shared fixtures: NaN-poisoned outputs and a fixed seed for every test."""

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # reference.py

from flash_attn import _engine  # noqa: E402


@pytest.fixture(autouse=True)
def poisoned_outputs():
    """Every buffer the engine allocates starts as NaN: an element a kernel forgets fails."""
    _engine.POISON_OUTPUTS = True
    torch.manual_seed(0)
    yield
    _engine.POISON_OUTPUTS = False


def pytest_report_header(config):
    from flash_attn import _lib

    error = _lib.load_error()
    lib = "NOT LOADED: " + error if error else _lib.lib().path
    return [
        f"libflashattn: {lib}",
        f"torch {torch.__version__}, threads {torch.get_num_threads()}",
        f"FLASHATTN_NUM_THREADS={os.environ.get('FLASHATTN_NUM_THREADS', '')}",
    ]
