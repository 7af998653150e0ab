"""Build the native extensions (HyperPatch-Match, fused exact search, bounded exact search) at install time (no JIT at import).

On x86-64 the kernel is built for the x86-64-v2 baseline; its dot-product loops carry their own
AVX2+FMA / AVX-512 target attributes and are picked at run time (``__builtin_cpu_supports``),
so the same build runs on any x86-64-v2 machine. Elsewhere (aarch64, ...) no ``-march`` is given
and the kernel compiles its portable dot product only. Threads are ``std::thread`` (no OpenMP
runtime, so no clash with the libgomp copies that torch and faiss load). No ``-ffast-math``:
results must be reproducible and match the NumPy reference.
"""
import platform

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup

# -march=x86-64-v2 is an x86-64 flag: compilers for other targets reject it.
_X86_64 = platform.machine().lower() in {"x86_64", "amd64", "x64"}

ext_modules = [
    Pybind11Extension(
        "compnn_index.search._hpm",
        ["compnn_index/search/csrc/hyperpatchmatch.cpp"],
        depends=["compnn_index/search/csrc/kernels.h"],
        cxx_std=17,
        extra_compile_args=["-O3", "-pthread"] + (["-march=x86-64-v2"] if _X86_64 else []),
        extra_link_args=["-pthread"],
    ),
    # Fused exact search (pixel-level GEMM + shifted sum): same flags, same run-time dispatch.
    Pybind11Extension(
        "compnn_index.search._fused",
        ["compnn_index/search/csrc/fused_exact.cpp"],
        cxx_std=17,
        extra_compile_args=["-O3", "-pthread"] + (["-march=x86-64-v2"] if _X86_64 else []),
        extra_link_args=["-pthread"],
    ),
    # Certified exact search pruned by the screen bounds (shares csrc/kernels.h with _hpm).
    Pybind11Extension(
        "compnn_index.search._bounded",
        ["compnn_index/search/csrc/bounded_exact.cpp"],
        cxx_std=17,
        extra_compile_args=["-O3", "-pthread"] + (["-march=x86-64-v2"] if _X86_64 else []),
        extra_link_args=["-pthread"],
        depends=["compnn_index/search/csrc/kernels.h"],
    ),
]

setup(ext_modules=ext_modules, cmdclass={"build_ext": build_ext})
