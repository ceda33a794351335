"""Direct calls for the two hot-path methods, ``PeerSession.encrypt`` and
``PeerSession.decrypt``.

uniffi's generated Python spends most of a call on marshalling written in
Python (a status record built per call, buffers read through context
managers), about 45 µs per call, against about 6 µs of Rust work for a 1 KiB
message. These replacements call the very same exported functions with the
same arguments and the same ownership rules (a cloned handle passed in, the
input borrowed, the returned buffer freed), and raise the same errors
through the generated error converter; they only skip the per-call Python
machinery. The uniffi version is pinned, and the package's tests compare
both paths.
"""

from __future__ import annotations

import ctypes

from ._native import hush_ffi as _g

_lib = _g._UniffiLib
_Status = _g._UniffiRustCallStatus
_clone = _lib.uniffi_hush_ffi_fn_clone_peersession
_free = _lib.ffi_hush_ffi_rustbuffer_free
_check = _g._uniffi_check_call_status
_errors = _g._UniffiFfiConverterTypeHushError
_string_at = ctypes.string_at
_addressof = ctypes.addressof
_byref = ctypes.byref


class _Borrowed(ctypes.Structure):
    """uniffi's `ForeignBytes` (an i32 length, then a pointer), with the
    pointer typed `c_char_p` so that a `bytes` object is passed as is."""

    _fields_ = [("len", ctypes.c_int32), ("data", ctypes.c_char_p)]


if ctypes.sizeof(_Borrowed) != ctypes.sizeof(_g._UniffiForeignBytes):
    raise ImportError("hush: uniffi's ForeignBytes layout changed")


def _prototype(function):
    """The exported method with the same ABI, taking `_Borrowed`."""
    address = ctypes.cast(function, ctypes.c_void_p).value
    return ctypes.CFUNCTYPE(
        _g._UniffiRustBuffer, ctypes.c_uint64, _Borrowed, ctypes.POINTER(_Status)
    )(address)

# The methods as uniffi generated them, kept for comparison in tests.
generated_encrypt = _g.PeerSession.encrypt
generated_decrypt = _g.PeerSession.decrypt


def _bytes_call(function, session: _g.PeerSession, data: bytes) -> bytes:
    if not isinstance(data, bytes):
        raise TypeError("a bytes object is required, not {!r}".format(type(data).__name__))
    status = _Status()
    handle = _clone(session._handle, _byref(status))
    if status.code:
        _check(None, status)
    # Borrowed for the duration of the call: `data` is alive and immutable.
    buffer = function(handle, _Borrowed(len(data), data or None), _byref(status))
    if status.code:
        _check(_errors, status)
    try:
        # A `Vec<u8>` comes back as a big-endian i32 length, then the bytes.
        length = buffer.len
        if length < 4:
            raise _g.InternalError("short byte buffer from Rust")
        start = _addressof(buffer.data.contents)
        size = int.from_bytes(_string_at(start, 4), "big")
        if size != length - 4:
            raise _g.InternalError("malformed byte buffer from Rust")
        return _string_at(start + 4, size)
    finally:
        _free(buffer, _byref(status))


_encrypt = _prototype(_lib.uniffi_hush_ffi_fn_method_peersession_encrypt)
_decrypt = _prototype(_lib.uniffi_hush_ffi_fn_method_peersession_decrypt)


def _fast_encrypt(self: _g.PeerSession, plaintext: bytes) -> bytes:
    return _bytes_call(_encrypt, self, plaintext)


def _fast_decrypt(self: _g.PeerSession, message: bytes) -> bytes:
    return _bytes_call(_decrypt, self, message)


_fast_encrypt.__doc__ = generated_encrypt.__doc__
_fast_decrypt.__doc__ = generated_decrypt.__doc__


def install() -> None:
    """Puts the direct calls in place of the generated ones."""
    _g.PeerSession.encrypt = _fast_encrypt
    _g.PeerSession.decrypt = _fast_decrypt
