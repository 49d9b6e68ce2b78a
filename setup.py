"""Builds the private extension kvi_engine._core; kernels/ ships as kvi_engine.kernels.

KVI_SANITIZE=1 builds the extension with AddressSanitizer + UBSan (run the tests with
LD_PRELOAD=$(gcc -print-file-name=libasan.so) so the runtime loads before Python).
"""
import os
from glob import glob

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import find_packages, setup

compile_args = ["-O3", "-fvisibility=hidden"]
link_args = []
if os.environ.get("KVI_SANITIZE"):
    sanitize = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-O1", "-g"]
    compile_args, link_args = sanitize, sanitize

ext = Pybind11Extension(
    "kvi_engine._core",
    sorted(glob("csrc/*.cpp")),
    include_dirs=["csrc"],
    cxx_std=17,
    extra_compile_args=compile_args,
    extra_link_args=link_args,
)

setup(
    packages=find_packages(include=["kvi_engine", "kvi_engine.*"]) + ["kvi_engine.kernels"],
    package_dir={"kvi_engine.kernels": "kernels"},
    package_data={"kvi_engine": ["data/**/*", "_core.pyi", "py.typed"]},
    ext_modules=[ext],
    cmdclass={"build_ext": build_ext},
    zip_safe=False,
)
