"""python -m flash_attn                        environment report
python -m flash_attn precompile --arch sm_80 [--arch sm_90a ...]   fill the cuda JIT cache
python -m flash_attn bench ...               benchmarks (flash_attn.bench.cli)
"""

import argparse
import os
import platform
import sys

_ENV_VARS = (
    "FLASHATTN_LIBRARY",
    "FLASH_ATTENTION_BACKEND",
    "FLASHATTN_NUM_THREADS",
    "FLASH_ATTENTION_USE_FLAGGEMS",
    "FLASHATTN_CPU_ISA",
)


def _line(key, value):
    print(f"{key:<22} {value}")


def _library_lines(_lib):
    error = _lib.load_error()
    if error is not None:
        _line("libflashattn", f"NOT LOADED: {error}")
        return False
    lib = _lib.lib()
    _line("libflashattn", f"{_lib.version_string()} (ABI {lib.fa_abi_version()}) at {lib.path}")
    return True


def _backend_lines(_lib):
    for name in ("cpu", "cuda", "opencl"):
        ok, why = _lib.backend_available(_lib.BACKEND_IDS[name])
        _line(f"backend {name}", "available" if ok else f"unavailable: {why}")
    cache = _lib.jit_cache_dir()
    _line("JIT cache", cache or "(none: the cache is off or the cuda backend is not built)")


def _device_lines(torch):
    from flash_attn import _engine

    _line("cpu threads", f"{_engine.cpu_num_threads()} (FLASHATTN_NUM_THREADS, else torch.get_num_threads())")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            major, minor = torch.cuda.get_device_capability(i)
            _line(f"cuda:{i}", f"{torch.cuda.get_device_name(i)} (sm_{major}{minor})")
    else:
        _line("cuda devices", "none visible to torch")


def report():
    import torch

    import flash_attn
    from flash_attn import _flaggems, _lib

    _line("flash_attn", f"{flash_attn.__version__} (API) / flash-attention-plus {flash_attn.__plus_version__}")
    _line("python", f"{platform.python_version()} on {platform.platform()}")
    _line("torch", f"{torch.__version__} (cuda {torch.version.cuda or 'none'})")
    loaded = _library_lines(_lib)
    if loaded:
        _backend_lines(_lib)
    _device_lines(torch)
    _line("FlagGems switch", _flaggems.status())
    for var in _ENV_VARS:
        if var in os.environ:
            _line(var, os.environ[var])
    return 0 if loaded else 1


def precompile(argv):
    from flash_attn import _lib

    parser = argparse.ArgumentParser(
        prog="python -m flash_attn precompile",
        description="Compile every cuda kernel variant into the JIT cache (needs libnvrtc, no GPU).",
    )
    parser.add_argument("--arch", action="append", required=True, help="e.g. sm_80, sm_90a (repeatable)")
    args = parser.parse_args(argv)
    status = 0
    for arch in args.arch:
        try:
            n = _lib.precompile(_lib.BACKEND_CUDA, arch)
            print(f"{arch}: {n} kernel variants compiled into {_lib.jit_cache_dir() or '(no cache)'}")
        except _lib.FlashAttnError as e:
            print(f"{arch}: failed: {e}", file=sys.stderr)
            status = 1
    return status


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        return report()
    if argv[0] == "precompile":
        return precompile(argv[1:])
    if argv[0] == "bench":
        from flash_attn.bench.cli import main as bench_main

        return bench_main(argv[1:])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
