"""The naive design, for comparison: log_cdata routed through a Python def_extern callback
(cffi embedding), which must take the GIL on every call."""
import os
import sys

import cffi

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from logpool import paths  # noqa: E402

ffibuilder = cffi.FFI()
ffibuilder.embedding_api("int naive_log(void *pool, int sink, const char *msg, size_t len);")
ffibuilder.set_source("_naive_log", "")
ffibuilder.embedding_init_code(f"""
import cffi
from _naive_log import ffi

_abi = cffi.FFI()
_abi.cdef("int log_cdata(void *pool, int socket_id, const char *msg, size_t len);")
_logpool = _abi.dlopen({paths.lib_path()!r})

@ffi.def_extern()
def naive_log(pool, sink, msg, length):
    return _logpool.log_cdata(pool, sink, msg, length)
""")

if __name__ == "__main__":
    out = sys.argv[1]
    os.makedirs(os.path.dirname(out), exist_ok=True)
    import shutil
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        built = ffibuilder.compile(tmpdir=tmp, target="libnaive.*")
        shutil.copyfile(built, out)
    print(out)
