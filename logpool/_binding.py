"""ABI-mode binding to liblogpool.so: the same library and the same C calls as Lua uses.
Declarations come from include/logpool.h; a code becomes an exception in one place."""
import os
import threading

import cffi

import logpool
from logpool import errors, paths
from logpool._cdef import cdef_block

ffi = cffi.FFI()
_lib = None
_lock = threading.Lock()


ffi.cdef(cdef_block(paths.header_path()))


def lib():
    """The loaded library (loaded once; refuses a library of another version)."""
    global _lib
    if _lib is None:
        with _lock:
            if _lib is None:
                path = os.environ.get("LOGPOOL_LIB") or paths.lib_path()
                if not os.path.exists(path):
                    raise errors.RuntimeUnavailable(
                        f"{path} does not exist: build it with `make build`", errors.ERUNTIME)
                loaded = ffi.dlopen(path)
                version = ffi.string(loaded.logpool_version()).decode()
                if version != logpool.__version__:
                    raise errors.RuntimeUnavailable(
                        f"{path} is logpool {version}, this package is {logpool.__version__}: "
                        "rebuild with `make build`", errors.ERUNTIME)
                _lib = loaded
    return _lib


def strerror(code):
    return ffi.string(lib().logpool_strerror(code)).decode()


def check(rc, what):
    """rc if >= 0, else raise the exception of that code."""
    if rc >= 0:
        return rc
    raise errors.from_code(rc, f"{what}: {strerror(rc)}")
