"""Builds the optional compiled op ``uniovseg._C`` (multi-scale deformable attention).

Package metadata lives in pyproject.toml; this file only declares the extension. Install with
``pip install --no-build-isolation -e .`` (the build needs the torch already installed).

- The C++ CPU kernels are always attempted.
- The CUDA kernels are added when ``torch.cuda.is_available()`` or ``FORCE_CUDA=1`` (compiling
  without a GPU needs nvcc; ``TORCH_CUDA_ARCH_LIST`` defaults to "8.0;9.0" then).
- If compiling fails, the installation still succeeds and uniovseg uses the PyTorch path of the
  op; a message says so. ``FORCE_CUDA=0`` skips CUDA, ``UNIOVSEG_SKIP_OP=1`` skips the op.
"""

import glob
import os
import site
import sys
import sysconfig

from setuptools import setup

CSRC = os.path.join("uniovseg", "csrc")
DEFAULT_ARCH_LIST = "8.0;9.0"
NOT_BUILT = (
    "uniovseg: the compiled multi-scale deformable-attention op was NOT built ({reason}). "
    "uniovseg will use its slower PyTorch path. To build it: `pip install --no-build-isolation "
    "-e .` with torch installed and a C++ compiler (FORCE_CUDA=1 adds the CUDA kernels)."
)


def _announce(message: str) -> None:
    bar = "=" * 80
    print(f"\n{bar}\n{message}\n{bar}\n", file=sys.stderr, flush=True)


def _want_cuda(torch) -> bool:
    force = os.environ.get("FORCE_CUDA")
    if force is not None:
        return force.strip() == "1"
    return torch.cuda.is_available()


def _prepare_cuda_environment(torch) -> None:
    """Environment fixes that must happen before torch.utils.cpp_extension is imported."""
    # An nvcc wrapper on PATH makes torch guess CUDA_HOME=/usr/local; prefer the toolkit.
    if not (os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")):
        if os.path.exists("/usr/local/cuda/bin/nvcc"):
            os.environ["CUDA_HOME"] = "/usr/local/cuda"
    # Without a GPU torch cannot pick the architectures (and crashes in torch 2.14).
    if not torch.cuda.is_available() and not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCH_LIST


def _cuda_library_include_dirs(cuda_home: str | None) -> list[str]:
    """Include folders of pip-installed CUDA libraries (cublas_v2.h, cusparse.h), which
    ATen/cuda/CUDAContext.h needs and a minimal toolkit may lack."""
    needed = ("cublas_v2.h", "cusparse.h")
    toolkit_include = os.path.join(cuda_home or "", "include")
    missing = [h for h in needed if not os.path.exists(os.path.join(toolkit_include, h))]
    if not missing:
        return []
    roots = [sysconfig.get_paths()["purelib"], *site.getsitepackages()]
    found = []
    for root in dict.fromkeys(roots):
        for include in sorted(glob.glob(os.path.join(root, "nvidia", "*", "include"))):
            if any(os.path.exists(os.path.join(include, h)) for h in missing):
                found.append(include)
    return found


def _extensions_and_cmdclass():
    if os.environ.get("UNIOVSEG_SKIP_OP") == "1":
        _announce(NOT_BUILT.format(reason="UNIOVSEG_SKIP_OP=1"))
        return [], {}
    try:
        import torch
    except ImportError:
        _announce(NOT_BUILT.format(reason="torch is not importable at build time"))
        return [], {}
    with_cuda = _want_cuda(torch)
    if with_cuda:
        _prepare_cuda_environment(torch)
    from torch.utils import cpp_extension

    sources = [
        os.path.join(CSRC, "ms_deform_attn.cpp"),
        os.path.join(CSRC, "cpu", "ms_deform_attn_cpu.cpp"),
    ]
    # at::parallel_for is a header template; with torch's OpenMP backend it needs -fopenmp here,
    # otherwise the CPU kernels silently run on one thread.
    openmp = ["-fopenmp"] if "OpenMP" in torch.__config__.parallel_info() else []
    extra_compile_args = {"cxx": ["-O3", *openmp]}
    define_macros = []
    include_dirs = [os.path.abspath(CSRC)]
    extension = cpp_extension.CppExtension
    if with_cuda:
        if cpp_extension.CUDA_HOME is None:
            _announce("uniovseg: CUDA was requested but no CUDA toolkit was found; CPU op only.")
        else:
            extension = cpp_extension.CUDAExtension
            sources.append(os.path.join(CSRC, "cuda", "ms_deform_attn_cuda.cu"))
            define_macros.append(("WITH_CUDA", None))
            extra_compile_args["nvcc"] = ["-O3", "-lineinfo"]
            include_dirs += _cuda_library_include_dirs(cpp_extension.CUDA_HOME)

    class OptionalBuildExtension(cpp_extension.BuildExtension):
        """Builds the op if it can; a failed build is reported, not fatal."""

        def build_extensions(self):
            try:
                super().build_extensions()
            except Exception as err:  # any compiler or toolchain failure: the op is optional
                _announce(NOT_BUILT.format(reason=f"{type(err).__name__}: {err}"))
                # Nothing was built: later steps (editable installs copy the library into the
                # source tree) must not look for it.
                self.extensions = []

    ext = extension(
        name="uniovseg._C",
        sources=sources,
        include_dirs=include_dirs,
        define_macros=define_macros,
        extra_compile_args=extra_compile_args,
        extra_link_args=openmp,
    )
    return [ext], {"build_ext": OptionalBuildExtension}


ext_modules, cmdclass = _extensions_and_cmdclass()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
