"""cffi build script for ``geneve._checksum_cffi`` (API mode, compiled at install time)."""

import pathlib
import re
import sys

from cffi import FFI

HERE = pathlib.Path(__file__).resolve().parent

ffibuilder = FFI()
# cdef takes the header minus preprocessor lines; #define constants become "#define X ..." form.
_header = (HERE / "_checksum.h").read_text()
_cdef = "\n".join(
    line
    for line in _header.splitlines()
    if not line.startswith(("#include", "#ifndef", "#endif", "/*"))
    and not re.match(r"#define GENEVE_CHECKSUM_H", line)
)
_cdef = re.sub(r"#define (\w+) -?\d+", r"#define \1 ...", _cdef)
ffibuilder.cdef(_cdef)

_flags = [] if sys.platform == "win32" else ["-O3", "-std=c99"]
ffibuilder.set_source(
    "geneve._checksum_cffi",
    '#include "_checksum.h"',
    sources=[str((HERE / "_checksum.c").relative_to(pathlib.Path.cwd()))]
    if HERE.is_relative_to(pathlib.Path.cwd())
    else [str(HERE / "_checksum.c")],
    include_dirs=[str(HERE)],
    extra_compile_args=_flags,
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
