"""Build: the package, plus the C++/CUDA extension from csrc/ when csrc/ holds sources.

With sources in csrc/: a CUDAExtension when the installed torch has CUDA and nvcc is found,
otherwise a CPU-only CppExtension. TORCH_CUDA_ARCH_LIST is honoured; with no GPU visible,
torch's builder needs it, so it defaults to DEFAULT_CUDA_ARCHS.
Install with `pip install --no-build-isolation -e .` so the extension builds against the torch
already installed.
"""

import glob
import os

from setuptools import setup

DEFAULT_CUDA_ARCHS = "8.0;9.0"


def extension_modules():
    cpp_sources = sorted(glob.glob("csrc/*.cpp"))
    cuda_sources = sorted(glob.glob("csrc/*.cu"))
    if not cpp_sources and not cuda_sources:
        return [], {}

    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    use_cuda = bool(cuda_sources) and torch.version.cuda is not None and CUDA_HOME is not None
    cxx_flags = ["-O3", "-std=c++17"]
    if use_cuda:
        if not torch.cuda.is_available():
            os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)
        ext = CUDAExtension(
            "replab_fast._C",
            cpp_sources + cuda_sources,
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-std=c++17", "--use_fast_math"]},
            define_macros=[("REPLAB_WITH_CUDA", "1")],
        )
    else:
        ext = CppExtension("replab_fast._C", cpp_sources, extra_compile_args={"cxx": cxx_flags + ["-fopenmp"]},
                           extra_link_args=["-fopenmp"])
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = extension_modules()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
