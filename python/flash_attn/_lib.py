"""The one module that touches ctypes: loads libflashattn, mirrors its public structs and turns
every non-OK fa_status into a Python exception.

Library lookup order (the first that exists wins):
  1. $FLASHATTN_LIBRARY (a path to the shared library),
  2. flash_attn/lib/libflashattn.so inside this package (where the wheel installs it),
  3. build/libflashattn.so of the source checkout this package was imported from (development).

At load the library's ABI version and the size and offset of every field of every mirrored
struct are compared with the ctypes mirrors; a mismatch refuses to load.

Everything here is torch-agnostic: a tensor is anything with data_ptr(), shape, stride() and a
dtype whose str() is "torch.float16" etc.
"""

import ctypes
import os
import sys
import threading
from pathlib import Path

ABI_VERSION = 1  # FA_ABI_VERSION of include/flashattn.h this mirror is written for
MAX_DIMS = 4

BACKEND_AUTO, BACKEND_CPU, BACKEND_CUDA, BACKEND_OPENCL = 0, 1, 2, 3
BACKEND_IDS = {"auto": BACKEND_AUTO, "cpu": BACKEND_CPU, "cuda": BACKEND_CUDA, "opencl": BACKEND_OPENCL}

DTYPES = {  # str(torch dtype) -> fa_dtype
    "torch.float32": 0,
    "torch.float16": 1,
    "torch.bfloat16": 2,
    "torch.int32": 3,
    "torch.int64": 4,
}

# ---------------------------------------------------------------- exceptions


class FlashAttnError(RuntimeError):
    """A libflashattn call failed. RuntimeError like upstream flash-attn's errors."""

    status_name = "FA_ERR_INTERNAL"

    def __init__(self, message, status=None):
        super().__init__(message)
        self.status = status


class InvalidArgumentError(FlashAttnError, ValueError):
    """A shape, stride, dtype, device or value is wrong (also a ValueError)."""


class UnsupportedError(FlashAttnError, NotImplementedError):
    """Valid, but this backend or build cannot do it."""


class BackendUnavailableError(FlashAttnError):
    """The backend cannot run on this machine (e.g. no libcuda), or the library is missing."""


class OutOfMemoryError(FlashAttnError):
    pass


class WorkspaceTooSmallError(FlashAttnError):
    pass


class CompileError(FlashAttnError):
    pass


class LaunchError(FlashAttnError):
    pass


class DeviceError(FlashAttnError):
    pass


class InternalError(FlashAttnError):
    pass


_STATUS_EXCEPTIONS = {  # fa_status -> exception class (numbers fixed forever by flashattn.h)
    1: InvalidArgumentError,
    2: UnsupportedError,
    3: BackendUnavailableError,
    4: OutOfMemoryError,
    5: WorkspaceTooSmallError,
    6: CompileError,
    7: LaunchError,
    8: DeviceError,
    9: InternalError,
}

# ---------------------------------------------------------------- struct mirrors


class FaTensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("dtype", ctypes.c_int32),
        ("ndim", ctypes.c_int32),
        ("shape", ctypes.c_int64 * MAX_DIMS),
        ("stride", ctypes.c_int64 * MAX_DIMS),
    ]


class FaOptions(ctypes.Structure):
    _fields_ = [
        ("softmax_scale", ctypes.c_float),
        ("causal", ctypes.c_bool),
        ("window_left", ctypes.c_int32),
        ("window_right", ctypes.c_int32),
        ("softcap", ctypes.c_float),
        ("dropout_p", ctypes.c_float),
        ("rng_seed", ctypes.c_uint64),
        ("rng_offset", ctypes.c_uint64),
        ("deterministic", ctypes.c_bool),
        ("num_splits", ctypes.c_int32),
        ("rotary_interleaved", ctypes.c_bool),
    ]


def _tensor_fields(*names):
    return [(name, FaTensor) for name in names]


class FaFwdArgs(ctypes.Structure):
    _fields_ = (
        _tensor_fields(
            "q", "k", "v", "cu_seqlens_q", "cu_seqlens_k", "seqused_k", "leftpad_k", "block_table", "alibi_slopes"
        )
        + [("max_seqlen_q", ctypes.c_int64), ("max_seqlen_k", ctypes.c_int64)]
        + _tensor_fields("out", "softmax_lse", "attn_probs")
    )


class FaBwdArgs(ctypes.Structure):
    _fields_ = (
        _tensor_fields("dout", "q", "k", "v", "out", "softmax_lse", "cu_seqlens_q", "cu_seqlens_k", "alibi_slopes")
        + [("max_seqlen_q", ctypes.c_int64), ("max_seqlen_k", ctypes.c_int64)]
        + _tensor_fields("dq", "dk", "dv", "softmax_d")
    )


class FaKvcacheArgs(ctypes.Structure):
    _fields_ = _tensor_fields(
        "q",
        "k_cache",
        "v_cache",
        "k_new",
        "v_new",
        "cache_seqlens",
        "cache_batch_idx",
        "cache_leftpad",
        "block_table",
        "rotary_cos",
        "rotary_sin",
        "alibi_slopes",
        "out",
        "softmax_lse",
    )


_MIRRORS = {
    "fa_tensor": FaTensor,
    "fa_options": FaOptions,
    "fa_fwd_args": FaFwdArgs,
    "fa_bwd_args": FaBwdArgs,
    "fa_kvcache_args": FaKvcacheArgs,
}

# op name -> (args struct, workspace-size function, run function)
_OPS = {
    "fwd": (FaFwdArgs, "fa_fwd_workspace_size", "fa_fwd"),
    "bwd": (FaBwdArgs, "fa_bwd_workspace_size", "fa_bwd"),
    "kvcache": (FaKvcacheArgs, "fa_fwd_kvcache_workspace_size", "fa_fwd_kvcache"),
}

# ---------------------------------------------------------------- loading

_c_size = ctypes.c_size_t
_p = ctypes.c_void_p
_SIGNATURES = {  # name -> (restype, argtypes); every exported function is declared
    "fa_version_number": (ctypes.c_uint, []),
    "fa_version_string": (ctypes.c_char_p, []),
    "fa_abi_version": (ctypes.c_uint, []),
    "fa_abi_sizeof": (_c_size, [ctypes.c_char_p]),
    "fa_abi_offsetof": (_c_size, [ctypes.c_char_p, ctypes.c_char_p]),
    "fa_status_string": (ctypes.c_char_p, [ctypes.c_int]),
    "fa_last_error_message": (ctypes.c_char_p, []),
    "fa_options_default": (FaOptions, []),
    "fa_backend_name": (ctypes.c_char_p, [ctypes.c_int]),
    "fa_backend_available": (ctypes.c_int, [ctypes.c_int]),
    "fa_context_create": (ctypes.c_int, [ctypes.c_int, ctypes.c_int, ctypes.POINTER(_p)]),
    "fa_context_destroy": (None, [_p]),
    "fa_context_backend": (ctypes.c_int, [_p]),
    "fa_context_set_num_threads": (ctypes.c_int, [_p, ctypes.c_int]),
    "fa_context_num_threads": (ctypes.c_int, [_p]),
    "fa_context_set_stream": (ctypes.c_int, [_p, _p]),
    "fa_jit_cache_dir": (ctypes.c_char_p, []),
    "fa_precompile": (ctypes.c_int, [ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(ctypes.c_int)]),
}
for _struct, _ws_name, _run_name in _OPS.values():
    _ptr = ctypes.POINTER(_struct)
    _SIGNATURES[_ws_name] = (ctypes.c_int, [_p, _ptr, ctypes.POINTER(FaOptions), ctypes.POINTER(_c_size)])
    _SIGNATURES[_run_name] = (ctypes.c_int, [_p, _ptr, ctypes.POINTER(FaOptions), _p, _c_size])

_LIB_NAMES = {"darwin": "libflashattn.dylib", "win32": "flashattn.dll"}
LIB_NAME = _LIB_NAMES.get(sys.platform, "libflashattn.so")


def candidate_paths():
    """Where the library is looked for, in order (see the module docstring). An explicit
    $FLASHATTN_LIBRARY is the only candidate, so a wrong path is never silently bypassed."""
    if os.environ.get("FLASHATTN_LIBRARY"):
        return [Path(os.environ["FLASHATTN_LIBRARY"])]
    here = Path(__file__).resolve().parent
    paths = [here / "lib" / LIB_NAME]
    if here.parent.name == "python":  # imported from the source checkout
        paths.append(here.parent.parent / "build" / LIB_NAME)
    return paths


_lock = threading.Lock()
_lib = None


def _declare(lib):
    for name, (restype, argtypes) in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes


def _check_abi(lib, path):
    if lib.fa_abi_version() != ABI_VERSION:
        raise BackendUnavailableError(
            f"{path}: ABI version {lib.fa_abi_version()}, but this flash_attn package needs "
            f"{ABI_VERSION}; rebuild the library or reinstall the package"
        )
    for cname, mirror in _MIRRORS.items():
        size = lib.fa_abi_sizeof(cname.encode())
        if size != ctypes.sizeof(mirror):
            raise BackendUnavailableError(
                f"{path}: sizeof({cname}) is {size}, the Python mirror has {ctypes.sizeof(mirror)}"
            )
        for field, _ in mirror._fields_:
            offset = lib.fa_abi_offsetof(cname.encode(), field.encode())
            expected = getattr(mirror, field).offset
            if offset != expected:
                raise BackendUnavailableError(
                    f"{path}: offsetof({cname}, {field}) is {offset}, the Python mirror has {expected}"
                )


def lib():
    """The loaded library (loaded and checked on first use). Raises BackendUnavailableError."""
    global _lib
    if _lib is not None:
        return _lib
    with _lock:
        if _lib is None:
            tried = []
            for path in candidate_paths():
                if not path.exists():
                    tried.append(f"{path} (missing)")
                    continue
                try:
                    loaded = ctypes.CDLL(str(path))
                    _declare(loaded)
                    _check_abi(loaded, path)
                except (OSError, AttributeError) as e:
                    tried.append(f"{path} ({e})")
                    continue
                _lib = loaded
                _lib.path = str(path)
                break
            else:
                raise BackendUnavailableError(
                    "flash_attn: cannot load libflashattn; tried: "
                    + "; ".join(tried)
                    + ". Set FLASHATTN_LIBRARY to the built library or reinstall flash_attn."
                )
    return _lib


def load_error():
    """None when the library loads, else why not (for the environment report)."""
    try:
        lib()
        return None
    except FlashAttnError as e:
        return str(e)


def check(status, what=""):
    """Raises the exception for a non-OK status, with the library's thread-local message."""
    if status == 0:
        return
    message = (_lib.fa_last_error_message() or b"").decode(errors="replace")
    name = (_lib.fa_status_string(status) or b"?").decode()
    prefix = f"flash_attn{': ' + what if what else ''}: "
    raise _STATUS_EXCEPTIONS.get(status, InternalError)(f"{prefix}{message or name} [{name}]", status)


# ---------------------------------------------------------------- tensors and options

_EMPTY = ctypes.c_char(0)  # stands in for the data of zero-element tensors (never dereferenced)


def to_fa_tensor(name, t):
    """A torch tensor (or None for an absent optional) -> fa_tensor. Raises naming the argument."""
    ft = FaTensor()
    if t is None:
        return ft
    dtype = DTYPES.get(str(t.dtype))
    if dtype is None:
        raise InvalidArgumentError(f"flash_attn: {name} has dtype {t.dtype}, which is not supported")
    ndim = t.dim()
    if not 1 <= ndim <= MAX_DIMS:
        raise InvalidArgumentError(
            f"flash_attn: {name} must have 1..{MAX_DIMS} dimensions (got {ndim}, shape {tuple(t.shape)})"
        )
    ptr = t.data_ptr()
    if ptr == 0 and t.numel() == 0:
        ptr = ctypes.addressof(_EMPTY)
    ft.data = ptr
    ft.dtype = dtype
    ft.ndim = ndim
    for i, (size, stride) in enumerate(zip(t.shape, t.stride())):
        ft.shape[i] = size
        ft.stride[i] = stride
    return ft


_INT32_MAX = 2**31 - 1


def make_options(
    softmax_scale=0.0,
    causal=False,
    window_left=-1,
    window_right=-1,
    softcap=0.0,
    dropout_p=0.0,
    rng_seed=0,
    rng_offset=0,
    deterministic=False,
    num_splits=0,
    rotary_interleaved=True,
):
    """fa_options; window bounds beyond int32 mean unbounded anyway, so they are clamped."""
    o = lib().fa_options_default()
    o.softmax_scale = float(softmax_scale)
    o.causal = bool(causal)
    o.window_left = -1 if window_left < 0 else min(int(window_left), _INT32_MAX)
    o.window_right = -1 if window_right < 0 else min(int(window_right), _INT32_MAX)
    o.softcap = float(softcap)
    o.dropout_p = float(dropout_p)
    o.rng_seed = int(rng_seed) & 0xFFFFFFFFFFFFFFFF
    o.rng_offset = int(rng_offset) & 0xFFFFFFFFFFFFFFFF
    o.deterministic = bool(deterministic)
    if not -_INT32_MAX <= int(num_splits) <= _INT32_MAX:
        raise InvalidArgumentError(f"flash_attn: num_splits must fit in int32 (got {num_splits})")
    o.num_splits = int(num_splits)
    o.rotary_interleaved = bool(rotary_interleaved)
    return o


def _build_args(op, tensors, scalars):
    struct = _OPS[op][0]()
    for name, t in tensors.items():
        setattr(struct, name, to_fa_tensor(name, t))
    for name, value in scalars.items():
        setattr(struct, name, int(value))
    return struct


# ---------------------------------------------------------------- contexts


class Context:
    """One fa_context (a backend on one device). Calls are serialised by a lock, because a
    context owns one thread pool / stream and ctypes releases the GIL during calls."""

    def __init__(self, backend, device_index=0):
        handle = ctypes.c_void_p()
        check(
            lib().fa_context_create(backend, device_index, ctypes.byref(handle)),
            f"creating the {backend_name(backend)} context",
        )
        self.handle = handle
        self.backend = backend
        self.device_index = device_index
        self.lock = threading.Lock()
        self._num_threads = None
        self.workspace = None  # the engine's reused cpu workspace (_engine._cpu_workspace)

    def set_num_threads(self, n):
        if n != self._num_threads:
            check(_lib.fa_context_set_num_threads(self.handle, int(n)), "set_num_threads")
            self._num_threads = n

    def num_threads(self):
        return _lib.fa_context_num_threads(self.handle)

    def set_stream(self, stream):
        check(_lib.fa_context_set_stream(self.handle, stream), "set_stream")

    def run(self, op, tensors, scalars, opts, alloc_workspace, before=None):
        """Runs op ("fwd", "bwd" or "kvcache"). tensors: field -> tensor or None; scalars:
        field -> int; alloc_workspace(nbytes) -> object with data_ptr() kept alive by the caller
        for the duration of the call; before(context) runs under the lock (stream, threads)."""
        args = _build_args(op, tensors, scalars)
        _, ws_name, run_name = _OPS[op]
        with self.lock:
            if before is not None:
                before(self)
            nbytes = ctypes.c_size_t(0)
            check(getattr(_lib, ws_name)(self.handle, ctypes.byref(args), ctypes.byref(opts), ctypes.byref(nbytes)), op)
            workspace = alloc_workspace(nbytes.value) if nbytes.value else None
            ptr = workspace.data_ptr() if workspace is not None else None
            check(getattr(_lib, run_name)(self.handle, ctypes.byref(args), ctypes.byref(opts), ptr, nbytes.value), op)
        return workspace


# ---------------------------------------------------------------- library-level queries


def version_string():
    return lib().fa_version_string().decode()


def backend_name(backend):
    return (lib().fa_backend_name(backend) or b"?").decode()


def backend_available(backend):
    """(True, "") or (False, why)."""
    status = lib().fa_backend_available(backend)
    if status == 0:
        return True, ""
    return False, (_lib.fa_last_error_message() or b"").decode(errors="replace") or _lib.fa_status_string(
        status
    ).decode()


def jit_cache_dir():
    return (lib().fa_jit_cache_dir() or b"").decode()


def precompile(backend, arch):
    """Compiles every shipped kernel variant for arch into the JIT cache; returns the count."""
    n = ctypes.c_int(0)
    check(lib().fa_precompile(backend, arch.encode(), ctypes.byref(n)), f"precompile {arch}")
    return n.value
