"""cffi build script for ``geneve._tun_cffi``: the tun bridge's data path (``_tun.c``, Linux)."""

import pathlib
import re

from cffi import FFI

HERE = pathlib.Path(__file__).resolve().parent

ffibuilder = FFI()
# cdef takes the header minus its preprocessor lines; #define constants become "#define X ...".
_header = (HERE / "_tun.h").read_text()
_cdef = "\n".join(
    line
    for line in _header.splitlines()
    if not line.startswith(("#include", "#ifndef", "#endif", "/*", "#define GENEVE_TUN_H"))
)
_cdef = re.sub(r"#define (\w+) -?\d+.*", r"#define \1 ...", _cdef)
ffibuilder.cdef(_cdef)


def _relative(path: pathlib.Path) -> str:
    try:
        return str(path.relative_to(pathlib.Path.cwd()))
    except ValueError:
        return str(path)


ffibuilder.set_source(
    "geneve._tun_cffi",
    '#include "_tun.h"',
    sources=[_relative(HERE / "_tun.c")],
    include_dirs=[str(HERE)],
    extra_compile_args=["-O2", "-std=c99"],
    libraries=["pthread"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
