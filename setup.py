"""Build pytransfer._C by driving CMakeLists.txt (the one build description).

Environment knobs:
  PYTRANSFER_ARCH=native|portable  native (default) adds -march=native for a local build;
                                   portable keeps the compiler's baseline ISA (wheels).
  PYTRANSFER_NO_EXT=1              skip the extension (pure-Python install).
  PYTRANSFER_REQUIRE_EXT=1         fail the install if the extension does not build
                                   (the Makefile and CI set it, so a broken build is loud).
If CMake or a C++ compiler is missing, or the build fails, the install still succeeds without
the extension and ``backend="auto"`` falls back to the reference implementation.
"""

import os
import shutil
import subprocess
import sys
import sysconfig
import warnings

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))


class CMakeExtension(Extension):
    def __init__(self, name: str) -> None:
        super().__init__(name, sources=[])


def _cmake_executable() -> str | None:
    try:
        import cmake  # the PyPI wheel ships a binary

        return os.path.join(cmake.CMAKE_BIN_DIR, "cmake")
    except ImportError:
        return shutil.which("cmake")


class CMakeBuild(build_ext):
    def run(self) -> None:
        if os.environ.get("PYTRANSFER_NO_EXT") == "1":
            warnings.warn("PYTRANSFER_NO_EXT=1: building without pytransfer._C", stacklevel=1)
            return
        try:
            super().run()
        except (OSError, subprocess.CalledProcessError) as exc:
            if os.environ.get("PYTRANSFER_REQUIRE_EXT") == "1":
                raise
            # No compiler / CMake: keep the install working, the reference backend remains.
            print(f"pytransfer: compiled extension not built ({exc}); "
                  "the reference backend will be used", file=sys.stderr)

    def build_extension(self, ext: Extension) -> None:
        cmake = _cmake_executable()
        if cmake is None:
            raise OSError("cmake not found")
        import pybind11

        out = os.path.dirname(os.path.abspath(self.get_ext_fullpath(ext.name)))
        build_temp = os.path.join(os.path.abspath(self.build_temp), "cmake")
        os.makedirs(build_temp, exist_ok=True)
        arch = os.environ.get("PYTRANSFER_ARCH", "native")
        cfg = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DPYTRANSFER_EXT_SUFFIX={sysconfig.get_config_var('EXT_SUFFIX')}",
            f"-DPYTRANSFER_NATIVE={'ON' if arch == 'native' else 'OFF'}",
            "-DPYTRANSFER_CUDA_CHECK=OFF",
            "-DCMAKE_BUILD_TYPE=Release",
        ]
        subprocess.check_call([cmake, "-S", ROOT, "-B", build_temp, *cfg])
        jobs = str(os.cpu_count() or 1)
        subprocess.check_call([cmake, "--build", build_temp, "--target", "_C", "-j", jobs])


setup(
    packages=[
        "pytransfer",
        "pytransfer.ot",
        "pytransfer.nn",
        "pytransfer.data",
        "pytransfer.methods",
        "pytransfer.bench",
        "pytransfer.free_energy",
        "pytransfer.hscore",
        "pytransfer.mmd",
        "pytransfer.kernels",
    ],
    package_dir={"pytransfer": "pytransfer", "pytransfer.kernels": "kernels"},
    ext_modules=[CMakeExtension("pytransfer._C")],
    cmdclass={"build_ext": CMakeBuild},
    zip_safe=False,
)
