"""The ctypes mirrors match the library's structs (checked at load, and here explicitly), a
mismatch refuses to load, and library errors carry the library's message."""

import ctypes

import pytest

from flash_attn import _lib


def test_struct_layouts_match():
    lib = _lib.lib()
    assert lib.fa_abi_version() == _lib.ABI_VERSION
    for cname, mirror in _lib._MIRRORS.items():
        assert lib.fa_abi_sizeof(cname.encode()) == ctypes.sizeof(mirror), cname
        for field, _ in mirror._fields_:
            assert lib.fa_abi_offsetof(cname.encode(), field.encode()) == getattr(mirror, field).offset, (cname, field)
    assert lib.fa_abi_sizeof(b"no_such_struct") == ctypes.c_size_t(-1).value


def test_layout_mismatch_is_refused():
    class Broken(ctypes.Structure):
        _fields_ = [("data", ctypes.c_void_p), ("dtype", ctypes.c_int64)]

    saved = _lib._MIRRORS["fa_tensor"]
    _lib._MIRRORS["fa_tensor"] = Broken
    try:
        with pytest.raises(_lib.BackendUnavailableError, match="fa_tensor"):
            _lib._check_abi(_lib.lib(), "libflashattn")
    finally:
        _lib._MIRRORS["fa_tensor"] = saved


def test_options_default_matches_flash_attn():
    o = _lib.lib().fa_options_default()
    assert (o.window_left, o.window_right, o.dropout_p, o.num_splits, o.rotary_interleaved) == (-1, -1, 0.0, 0, True)
    assert o.softmax_scale == 0.0 and not o.causal and o.softcap == 0.0


def test_versions_and_names():
    assert _lib.version_string().count(".") == 2
    assert _lib.backend_name(_lib.BACKEND_CPU) == "cpu" and _lib.backend_name(_lib.BACKEND_CUDA) == "cuda"
    assert _lib.backend_available(_lib.BACKEND_CPU) == (True, "")
    ok, why = _lib.backend_available(_lib.BACKEND_OPENCL)
    assert not ok and why


def test_status_maps_to_exception_with_message():
    lib = _lib.lib()
    handle = ctypes.c_void_p()
    status = lib.fa_context_create(99, 0, ctypes.byref(handle))  # no such backend
    assert status != 0
    with pytest.raises(_lib.FlashAttnError) as info:
        _lib.check(status, "context")
    assert info.value.status == status and "FA_ERR_" in str(info.value)


def test_missing_library_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(_lib, "_lib", None)
    monkeypatch.setenv("FLASHATTN_LIBRARY", str(tmp_path / "nope.so"))
    with pytest.raises(_lib.BackendUnavailableError, match="nope.so"):
        _lib.lib()
    assert "nope.so" in _lib.load_error()


def test_explicit_library_path_is_the_only_candidate(monkeypatch):
    monkeypatch.setenv("FLASHATTN_LIBRARY", "/x/libflashattn.so")
    assert [str(p) for p in _lib.candidate_paths()] == ["/x/libflashattn.so"]
    monkeypatch.delenv("FLASHATTN_LIBRARY")
    assert _lib.candidate_paths()[0].parts[-3:] == ("flash_attn", "lib", _lib.LIB_NAME)
