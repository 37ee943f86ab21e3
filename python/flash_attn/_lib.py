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
import struct
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

# ---------------------------------------------------------------- environment


def env_reader(name):
    """A function returning os.environ.get(name), read afresh on each call (tests and users may
    change a variable at any time) but at ~0.05 us instead of ~0.7 us: it looks the encoded key up
    in os.environ's own mapping, which every change made through os.environ updates (os.putenv
    alone is seen by neither)."""
    environ = os.environ
    data, encode, decode = (getattr(environ, a, None) for a in ("_data", "encodekey", "decodevalue"))
    if not isinstance(data, dict) or encode is None or decode is None:  # not CPython's os.environ
        return lambda: environ.get(name)
    key = encode(name)
    last = [(None, None)]  # (raw value, decoded value) of the last read, replaced as one tuple

    def read():
        if os.environ is not environ:  # replaced wholesale (not by os itself): ask the new one
            return os.environ.get(name)
        raw = data.get(key)
        if raw is None:
            return None
        entry = last[0]
        if entry[0] is not raw:
            last[0] = entry = raw, decode(raw)
        return entry[1]

    return read


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

# The args structs are written with struct.pack_into straight into one buffer per op and
# context (Context.run), so a call creates no ctypes objects. Formats are derived from the ctypes
# mirrors' offsets, which _check_abi compares with the library's.
_CODES = {ctypes.c_void_p: "Q", ctypes.c_int32: "i", ctypes.c_int64: "q", ctypes.c_uint64: "Q"}
_CODES.update({ctypes.c_float: "f", ctypes.c_bool: "?"})


def _packer(mirror):
    """struct.Struct writing every scalar field of mirror in order, padding included."""
    fmt, at = "=", 0
    for name, ctype in mirror._fields_:
        offset = getattr(mirror, name).offset
        fmt += "x" * (offset - at) + _CODES[ctype]
        at = offset + ctypes.sizeof(ctype)
    return struct.Struct(fmt + "x" * (ctypes.sizeof(mirror) - at))


_OPTIONS = _packer(FaOptions)


def _tensor_format(ndim):
    """struct format of one fa_tensor of ndim dims (data, dtype, ndim, shape..., stride...), zeros
    beyond ndim; ndim 0: an absent tensor, all zeros."""
    if ndim == 0:
        return "x" * ctypes.sizeof(FaTensor)
    pad = "x" * 8 * (MAX_DIMS - ndim)
    return f"Qii{ndim}q{pad}{ndim}q{pad}"


assert FaTensor.shape.offset == 16 and FaTensor.stride.offset == 16 + 8 * MAX_DIMS
assert all(struct.calcsize("=" + _tensor_format(n)) == ctypes.sizeof(FaTensor) for n in range(MAX_DIMS + 1))
_TENSOR = [struct.Struct("=" + _tensor_format(n)) for n in range(MAX_DIMS + 1)]  # by ndim
_EMPTY = ctypes.c_char(0)  # stands in for the data of zero-element tensors (never dereferenced)
_dtype_ids = {}  # dtype object -> fa_dtype, filled from DTYPES on first sight


def pack_tensor(buffer, offset, name, t):
    """Writes tensor t as the fa_tensor at offset of buffer (which must hold zeros there if t is None)."""
    shape, dtype, ptr = t.shape, _dtype_ids.get(t.dtype), t.data_ptr()
    ndim = len(shape)
    if dtype is None or not ptr or not 1 <= ndim <= MAX_DIMS:
        dtype, ptr = _checked(name, t)
    _TENSOR[ndim].pack_into(buffer, offset, ptr, dtype, ndim, *shape, *t.stride())


def _checked(name, t):
    """(fa_dtype, data pointer) of a tensor off the common path: first sight of its dtype, a null
    pointer (zero elements), or a rank the library cannot take."""
    ndim = t.dim()
    if not 1 <= ndim <= MAX_DIMS:
        raise InvalidArgumentError(
            f"flash_attn: {name} must have 1..{MAX_DIMS} dimensions (got {ndim}, shape {tuple(t.shape)})"
        )
    dtype = DTYPES.get(str(t.dtype))
    if dtype is None:
        raise InvalidArgumentError(f"flash_attn: {name} has dtype {t.dtype}, which is not supported")
    _dtype_ids[t.dtype] = dtype
    ptr = t.data_ptr()
    if ptr == 0 and t.numel() == 0:
        ptr = ctypes.addressof(_EMPTY)
    return dtype, ptr


def to_fa_tensor(name, t):
    """A torch tensor (or None for an absent optional) -> a fresh fa_tensor."""
    ft = FaTensor()
    if t is not None:
        pack_tensor(ft, 0, name, t)
    return ft


_INT32_MAX = 2**31 - 1
_U64 = 0xFFFFFFFFFFFFFFFF


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
    """fa_options' field values in order (Context.run writes them); window bounds beyond int32
    mean unbounded anyway, so they are clamped."""
    num_splits = int(num_splits)
    if not -_INT32_MAX <= num_splits <= _INT32_MAX:
        raise InvalidArgumentError(f"flash_attn: num_splits must fit in int32 (got {num_splits})")
    return (
        float(softmax_scale),
        bool(causal),
        -1 if window_left < 0 else min(int(window_left), _INT32_MAX),
        -1 if window_right < 0 else min(int(window_right), _INT32_MAX),
        float(softcap),
        float(dropout_p),
        int(rng_seed) & _U64,
        int(rng_offset) & _U64,
        bool(deterministic),
        num_splits,
        bool(rotary_interleaved),
    )


_I64 = struct.Struct("=q")  # max_seqlen_q / max_seqlen_k
_INT64_MIN, _INT64_END = -(2**63), 2**63


class _Unusual(Exception):
    """A tensor off _Call.fill's common path (see _checked)."""


class _Call:
    """One op's reusable fa_*_args and fa_options buffers and its two library functions, called
    through raw-address prototypes (an int per pointer converts faster than a struct byref).

    The args struct is written by one struct.pack_into per call, whose format depends only on
    the rank of each tensor field (0: absent); formats are made on first sight of a rank pattern.
    Pad bytes pack as zeros, so every field the call does not give is zero: nothing of a
    previous call survives."""

    def __init__(self, op):
        mirror, ws_name, run_name = _OPS[op]
        self.buffer = bytearray(ctypes.sizeof(mirror))
        self.args = mirror.from_buffer(self.buffer)
        self.opts = FaOptions()
        self.address = ctypes.addressof(self.args), ctypes.addressof(self.opts)
        self.nbytes = ctypes.c_size_t(0)
        self.workspace_size = _RAW_WORKSPACE_SIZE((ws_name, _lib))
        self.run = _RAW_RUN((run_name, _lib))
        self.tensor_fields = tuple(name for name, ctype in mirror._fields_ if ctype is FaTensor)  # in order
        self.offsets = {name: getattr(mirror, name).offset for name, _ in mirror._fields_}
        self.packers = {}  # rank pattern (base-5 digits, first field first) -> struct.Struct
        self.sized = False  # the last call needed a workspace it was not given: ask for the size first

    def _packer(self, key):
        """The struct.Struct writing the whole args struct for rank pattern key."""
        ranks, rest = [], key
        for _ in self.tensor_fields:
            rest, rank = divmod(rest, MAX_DIMS + 1)
            ranks.append(rank)
        fmt, at = "=", 0
        for name, rank in zip(self.tensor_fields, reversed(ranks)):
            offset = self.offsets[name]
            fmt += "x" * (offset - at) + _tensor_format(rank)  # skipped bytes (scalars) pack as zeros
            at = offset + ctypes.sizeof(FaTensor)
        packer = struct.Struct(fmt + "x" * (len(self.buffer) - at))
        self.packers[key] = packer
        return packer

    def fill(self, tensors, scalars, opts):
        """Writes the whole args struct and the options. tensors: one tensor or None per fa_tensor
        field, in the struct's order; scalars: field -> int, or None."""
        values, key = [], 0
        try:
            for t in tensors:  # the hot loop of every call: a few attribute reads per tensor
                key *= MAX_DIMS + 1
                if t is not None:
                    shape, ptr = t.shape, t.data_ptr()
                    ndim = len(shape)
                    if not ptr or not 0 < ndim <= MAX_DIMS:
                        raise _Unusual
                    key += ndim
                    values += (ptr, _dtype_ids[t.dtype], ndim, *shape, *t.stride())
        except (_Unusual, KeyError):  # first sight of a dtype, zero elements, or a bad rank
            values, key = self._checked_values(tensors)
        packer = self.packers.get(key) or self._packer(key)
        packer.pack_into(self.buffer, 0, *values)
        if scalars:
            for name, value in scalars.items():
                if not _INT64_MIN <= value < _INT64_END:
                    raise InvalidArgumentError(f"flash_attn: {name} must fit in int64 (got {value})")
                _I64.pack_into(self.buffer, self.offsets[name], value)
        try:
            _OPTIONS.pack_into(self.opts, 0, *opts)
        except OverflowError:  # a float beyond float32: ctypes stores +-inf, and the library judges it
            ctypes.memmove(self.address[1], ctypes.addressof(FaOptions(*opts)), ctypes.sizeof(FaOptions))

    def _checked_values(self, tensors):
        """fill's loop with every check and its error messages (see _checked)."""
        values, key = [], 0
        for name, t in zip(self.tensor_fields, tensors):
            key *= MAX_DIMS + 1
            if t is not None:
                dtype, ptr = _checked(name, t)
                shape = t.shape
                key += len(shape)
                values += (ptr, dtype, len(shape), *shape, *t.stride())
        return values, key


_WORKSPACE_TOO_SMALL = 5
_RAW_WORKSPACE_SIZE = ctypes.CFUNCTYPE(ctypes.c_int, _p, _p, _p, _p)
_RAW_RUN = ctypes.CFUNCTYPE(ctypes.c_int, _p, _p, _p, _p, _c_size)


# ---------------------------------------------------------------- contexts


class Context:
    """One fa_context (a backend on one device). Calls are serialised by a lock, because a
    context owns one thread pool / stream and ctypes releases the GIL during calls; the lock also
    guards the context's reusable args buffers and its workspace."""

    def __init__(self, backend, device_index=0):
        handle = ctypes.c_void_p()
        check(
            lib().fa_context_create(backend, device_index, ctypes.byref(handle)),
            f"creating the {backend_name(backend)} context",
        )
        self.handle = handle
        self._handle = handle.value  # the raw address the raw-address prototypes take
        self.backend = backend
        self.device_index = device_index
        self.lock = threading.Lock()
        self._num_threads = None
        self._stream = None
        self._calls = {op: _Call(op) for op in _OPS}
        self.workspace = None  # the cpu context's reused workspace (uint8 tensor), see run

    def set_num_threads(self, n):
        if n != self._num_threads:
            check(_lib.fa_context_set_num_threads(self.handle, int(n)), "set_num_threads")
            self._num_threads = n

    def num_threads(self):
        return _lib.fa_context_num_threads(self.handle)

    def set_stream(self, stream):
        """Only the context itself changes its stream, so an unchanged handle needs no call."""
        if stream != self._stream:
            check(_lib.fa_context_set_stream(self.handle, stream), "set_stream")
            self._stream = stream

    def run(self, op, tensors, scalars, opts, alloc_workspace, stream=None, num_threads=None, reuse=False):
        """Runs op ("fwd", "bwd" or "kvcache") and returns its workspace (None if it took none).
        tensors: see _Call.fill; scalars: field -> int or None; opts: make_options(...);
        alloc_workspace(nbytes) -> a new uint8 tensor of at least nbytes, which the caller keeps
        alive for the duration of the call; stream (cuda) / num_threads (cpu): set before the call.

        One library call when it can: the run is tried with the workspace at hand (reuse: the
        context's own, grown by alloc_workspace and kept; else none) and the library is asked for
        the size only when that is too small (it checks before it touches anything). An op whose
        last call needed a workspace it did not have asks first (the cuda backward)."""
        call = self._calls[op]
        with self.lock:
            if stream is not None:
                self.set_stream(stream)
            if num_threads is not None and num_threads != self._num_threads:
                self.set_num_threads(num_threads)
            call.fill(tensors, scalars, opts)
            handle, (args, options) = self._handle, call.address
            workspace = self.workspace if reuse else None
            size = 0 if workspace is None else workspace.numel()
            if not call.sized:
                status = call.run(handle, args, options, workspace.data_ptr() if size else None, size)
                if status != _WORKSPACE_TOO_SMALL:
                    if status:
                        check(status, op)
                    return workspace
            status = call.workspace_size(handle, args, options, ctypes.addressof(call.nbytes))
            if status:
                check(status, op)
            needed = call.nbytes.value
            call.sized = not reuse and needed > 0
            if needed > size:
                if reuse:
                    self.workspace = workspace = None  # free the old buffer before taking the larger one
                workspace = alloc_workspace(needed)
                size = workspace.numel()
                if reuse:
                    self.workspace = workspace
            status = call.run(handle, args, options, workspace.data_ptr() if size else None, size)
            if status:
                check(status, op)
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
