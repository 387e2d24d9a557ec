"""Builds hoe's onnxruntime kernels (runtime/csrc) as `hoe.runtime._kernels`; everything else is pyproject.toml.

The library is loaded by onnxruntime (SessionOptions.register_custom_ops_library), never imported by Python, so
it links nothing of CPython. It is optional: without a C++17 compiler the install goes on without it, and only
exports made with `--mixture-kernel` then refuse to load (runtime/kernels.py says why).
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension(
    "hoe.runtime._kernels",
    sources=["runtime/csrc/mixture.cc", "runtime/csrc/attention.cc", "runtime/csrc/activation.cc",
             "runtime/csrc/linear.cc", "runtime/csrc/norm.cc", "runtime/csrc/ort_op.cc"],
    depends=["runtime/csrc/mixture.h", "runtime/csrc/attention.h", "runtime/csrc/activation.h", "runtime/csrc/exp.h",
             "runtime/csrc/linear.h", "runtime/csrc/norm.h", "runtime/csrc/cpu.h", "runtime/csrc/ort_abi.h"],
    language="c++",
    extra_compile_args=["-std=c++17", "-O3", "-fvisibility=hidden"],
    optional=True,
)])
