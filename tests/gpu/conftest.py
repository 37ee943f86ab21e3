"""The GPU tests reuse the CPU suite's float64 reference, case grids and NaN-poisoning fixture
(tests/python); without a GPU every test here skips."""

import importlib.util
import sys
from pathlib import Path

_PYTHON_TESTS = Path(__file__).resolve().parents[1] / "python"
sys.path.insert(0, str(_PYTHON_TESTS))  # reference.py, test_attention.py, ...

_spec = importlib.util.spec_from_file_location("python_tests_conftest", _PYTHON_TESTS / "conftest.py")
_shared = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_shared)

poisoned_outputs = _shared.poisoned_outputs
pytest_report_header = _shared.pytest_report_header
