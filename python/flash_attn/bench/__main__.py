"""`python -m flash_attn.bench ...`, the same as `python -m flash_attn bench ...`."""

import sys

from .cli import main

sys.exit(main(sys.argv[1:]))
