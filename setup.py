"""Build the native HyperPatch-Match extension at install time (no JIT at import).

The kernel is built for the x86-64-v2 baseline; its dot-product loops carry their own
AVX2+FMA / AVX-512 target attributes and are picked at run time (``__builtin_cpu_supports``),
so the same build runs on any x86-64-v2 machine. Threads are ``std::thread`` (no OpenMP runtime,
so no clash with the libgomp copies that torch and faiss load). No ``-ffast-math``: results must be
reproducible and match the NumPy reference.
"""
from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup

ext_modules = [
    Pybind11Extension(
        "compnn_index._hpm",
        ["compnn_index/csrc/hyperpatchmatch.cpp"],
        cxx_std=17,
        extra_compile_args=["-O3", "-march=x86-64-v2", "-pthread"],
        extra_link_args=["-pthread"],
    ),
]

setup(ext_modules=ext_modules, cmdclass={"build_ext": build_ext})
