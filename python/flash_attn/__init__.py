"""flash_attn: a drop-in replacement for flash-attn 2.8.3 over libflashattn (C11; cpu and cuda
backends). `__version__` is the upstream API version this package implements, because clients
gate on it; `__plus_version__` is this project's own release."""

__version__ = "2.8.3"
__plus_version__ = "0.1.0"

from flash_attn.flash_attn_interface import (  # noqa: E402
    flash_attn_func,
    flash_attn_kvpacked_func,
    flash_attn_qkvpacked_func,
    flash_attn_varlen_func,
    flash_attn_varlen_kvpacked_func,
    flash_attn_varlen_qkvpacked_func,
    flash_attn_with_kvcache,
)


def library_version():
    """The C library's version string ("0.1.0"); raises if the library cannot be loaded."""
    from flash_attn import _lib

    return _lib.version_string()


__all__ = [
    "flash_attn_func",
    "flash_attn_kvpacked_func",
    "flash_attn_qkvpacked_func",
    "flash_attn_varlen_func",
    "flash_attn_varlen_kvpacked_func",
    "flash_attn_varlen_qkvpacked_func",
    "flash_attn_with_kvcache",
]
