"""Where the built pieces live (also printed by `python -m logpool paths`). An installed
package carries the header and the Lua module inside it (logpool/include, logpool/lua); a
source tree has them at its top (include/, lua/)."""
import os

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(PACKAGE_DIR)


def _inside_or_beside(name):
    inside = os.path.join(PACKAGE_DIR, name)
    return inside if os.path.isdir(inside) else os.path.join(ROOT, name)


def lib_path():
    """Absolute path of liblogpool.so (built by build_ffi.py)."""
    return os.path.join(PACKAGE_DIR, "liblogpool.so")


def producer_lib_path():
    """Absolute path of liblogpool_producer.so: agent mode only, no Python (the Lua module
    and the nginx module load it for {"agent": ...})."""
    return os.path.join(PACKAGE_DIR, "liblogpool_producer.so")


def nginx_module_path():
    """Absolute path of the native nginx module ngx_http_logpool_module.so (built by
    `make build` against the installed nginx; load it with nginx's load_module)."""
    return os.path.join(PACKAGE_DIR, "ngx_http_logpool_module.so")


def lua_dir():
    """Directory such that <dir>/resty/logpool.lua is the OpenResty module."""
    return _inside_or_beside("lua")


def include_dir():
    """Directory of logpool.h."""
    return _inside_or_beside("include")


def header_path():
    return os.path.join(include_dir(), "logpool.h")
