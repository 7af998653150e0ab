"""Build the native HyperPatch-Match extension at install time (no JIT at import)."""
from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup

ext_modules = [
    Pybind11Extension(
        "compnn_index._hpm",
        ["compnn_index/csrc/hyperpatchmatch.cpp"],
        cxx_std=17,
        extra_compile_args=["-O3", "-fopenmp", "-march=x86-64-v2", "-ffast-math", "-fno-finite-math-only"],
        extra_link_args=["-fopenmp"],
    ),
]

setup(ext_modules=ext_modules, cmdclass={"build_ext": build_ext})
