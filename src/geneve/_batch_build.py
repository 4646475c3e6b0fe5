"""cffi build script for ``geneve._batch_cffi``: recvmmsg/sendmmsg and the fast path (Linux)."""

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



def _relative(path: pathlib.Path) -> str:
    try:
        return str(path.relative_to(pathlib.Path.cwd()))
    except ValueError:
        return str(path)


# The fast path counts frames into the flow table, so the table's code is compiled in here too
# (the same _flowtable.c as geneve._flows_cffi, which makes the tables: one layout).
ffibuilder.set_source(
    "geneve._batch_cffi",
    '#include "_batch.h"',
    sources=[_relative(HERE / "_batch.c"), _relative(HERE / "_flowtable.c")],
    include_dirs=[str(HERE)],
    extra_compile_args=["-O2", "-std=c99"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
