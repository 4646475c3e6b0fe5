"""Build the optional C checksum module; fall back to pure Python when it cannot be built.

setuptools reads the metadata from pyproject.toml. This file exists only because cffi's
``cffi_modules`` hook is a ``setup()`` keyword, and because a failed compile must not fail the
install: the package works without the C module (slower), and says so with a warning.
"""

from setuptools import setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    def run(self) -> None:
        try:
            super().run()
        except Exception as err:  # no compiler, no headers: keep the pure-Python fallback
            self.warn(f"geneve: C checksum module not built ({err}); using pure Python")

    def build_extension(self, ext):  # type: ignore[no-untyped-def]
        try:
            super().build_extension(ext)
        except Exception as err:
            self.warn(f"geneve: could not build {ext.name} ({err}); using pure Python")


setup(
    cffi_modules=[
        "src/geneve/_checksum_build.py:ffibuilder",
        "src/geneve/_batch_build.py:ffibuilder",
        "src/geneve/_flows_build.py:ffibuilder",
        "src/geneve/_tun_build.py:ffibuilder",
    ],
    cmdclass={"build_ext": OptionalBuildExt},
)
