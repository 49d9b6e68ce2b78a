"""Builds the private extension kvi_engine._core; kernels/ ships as kvi_engine.kernels.

KVI_SANITIZE=1 builds the extension with AddressSanitizer + UBSan; ``bash tests/sanitize.sh`` builds it in a scratch
copy and runs the native and bank tests against it (CI does).
"""
import os
import sys
from glob import glob

from pybind11.setup_helpers import Pybind11Extension, build_ext, has_flag
from setuptools import find_namespace_packages, setup

compile_args = ["-O3", "-fvisibility=hidden"]
link_args = []
if os.environ.get("KVI_SANITIZE"):
    sanitize = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-O1", "-g"]
    compile_args, link_args = sanitize, sanitize


class BuildExt(build_ext):
    """OpenMP with GCC on Linux: its libgomp is the runtime PyTorch's wheels load, which the extension then shares
    (csrc/kvi/parallel.h says why). Clang's libomp would be a second runtime, so clang and KVI_NO_OPENMP=1 build
    plain std::threads."""

    def build_extensions(self):
        cc = " ".join(getattr(self.compiler, "compiler_so", None) or [])
        if sys.platform.startswith("linux") and "clang" not in cc and not os.environ.get("KVI_NO_OPENMP") \
                and has_flag(self.compiler, "-fopenmp"):
            for e in self.extensions:
                e.extra_compile_args = [*e.extra_compile_args, "-fopenmp"]
                e.extra_link_args = [*e.extra_link_args, "-fopenmp"]
        super().build_extensions()


ext = Pybind11Extension(
    "kvi_engine._core",
    sorted(glob("csrc/*.cpp")),
    include_dirs=["csrc"],
    depends=sorted(glob("csrc/kvi/*.h")),  # header-only algorithms: a changed header must rebuild the module
    cxx_std=17,
    extra_compile_args=compile_args,
    extra_link_args=link_args,
)

setup(
    # Namespace packages: the data folders (kvi_engine/data/*) are packages of their own, so setuptools neither
    # warns about importable folders missing from `packages` nor drops their files.
    packages=find_namespace_packages(include=["kvi_engine", "kvi_engine.*"], exclude=["*.__pycache__"])
    + ["kvi_engine.kernels"],
    package_dir={"kvi_engine.kernels": "kernels"},
    package_data={"": ["*.jsonl", "*.json", "*.md", "*.txt", "*.safetensors", "*.html", "*.js", "*.css"], "kvi_engine": ["_core.pyi", "py.typed"]},
    ext_modules=[ext],
    cmdclass={"build_ext": BuildExt},
    zip_safe=False,
)
