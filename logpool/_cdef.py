"""Reading the declarations out of a header: shared by the runtime (logpool._binding) and the
build (build_ffi.py loads this file by path, so building never imports the package)."""
import re


def cdef_block(path):
    """The declarations between the LOGPOOL_CDEF markers of a header."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    match = re.search(r"/\* LOGPOOL_CDEF_BEGIN \*/(.*?)/\* LOGPOOL_CDEF_END \*/", text, re.S)
    if match is None:
        raise RuntimeError(f"{path}: no LOGPOOL_CDEF block")
    return match.group(1)
