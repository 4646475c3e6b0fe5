"""cffi build script for ``geneve._flows_cffi``: the flow table in C (``_flowtable.c``)."""

import pathlib
import re

from cffi import FFI

HERE = pathlib.Path(__file__).resolve().parent

ffibuilder = FFI()
# cdef takes the header minus its preprocessor lines; #define constants become "#define X ...".
_header = (HERE / "_flowtable.h").read_text()
_cdef = "\n".join(
    line
    for line in _header.splitlines()
    if not line.startswith(("#include", "#ifndef", "#endif", "#define GENEVE_FLOWTABLE_H"))
)
_cdef = re.sub(r"#define (\w+) -?\d+.*", r"#define \1 ...", _cdef)
ffibuilder.cdef(_cdef)

_source = HERE / "_flowtable.c"
try:
    _source_arg = str(_source.relative_to(pathlib.Path.cwd()))
except ValueError:
    _source_arg = str(_source)
ffibuilder.set_source(
    "geneve._flows_cffi",
    '#include "_flowtable.h"',
    sources=[_source_arg],
    include_dirs=[str(HERE)],
    extra_compile_args=["-O2", "-std=c99"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
