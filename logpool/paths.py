"""Where the built pieces live (also printed by `python -m logpool paths`)."""
import os

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(PACKAGE_DIR)


def lib_path():
    """Absolute path of liblogpool.so (built by build_ffi.py)."""
    return os.path.join(PACKAGE_DIR, "liblogpool.so")


def lua_dir():
    """Directory such that <dir>/resty/logpool.lua is the OpenResty module."""
    return os.path.join(ROOT, "lua")


def include_dir():
    """Directory of logpool.h."""
    return os.path.join(ROOT, "include")


def header_path():
    return os.path.join(include_dir(), "logpool.h")
