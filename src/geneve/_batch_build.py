"""cffi build script for ``geneve._batch_cffi``: recvmmsg/sendmmsg for the appliance (Linux)."""

import pathlib
import re

from cffi import FFI

HERE = pathlib.Path(__file__).resolve().parent

ffibuilder = FFI()
_header = (HERE / "_batch.h").read_text()
_cdef = "\n".join(
    line
    for line in _header.splitlines()
    if not line.startswith(("#include", "#ifndef", "#endif", "/*", "#define GENEVE_BATCH_H"))
)
_cdef = re.sub(r"#define (\w+) -?\d+", r"#define \1 ...", _cdef)
ffibuilder.cdef(_cdef)

_source = HERE / "_batch.c"
try:
    _source_arg = str(_source.relative_to(pathlib.Path.cwd()))
except ValueError:
    _source_arg = str(_source)
ffibuilder.set_source(
    "geneve._batch_cffi",
    '#include "_batch.h"',
    sources=[_source_arg],
    include_dirs=[str(HERE)],
    extra_compile_args=["-O2", "-std=c99"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
