"""Build: the package, plus the C++/CUDA extension from csrc/ when csrc/ holds sources.

With sources in csrc/: a CUDAExtension when the installed torch has CUDA and nvcc is found,
otherwise a CPU-only CppExtension. TORCH_CUDA_ARCH_LIST is honoured; with no GPU visible,
torch's builder needs it, so it defaults to DEFAULT_CUDA_ARCHS.
Install with `pip install --no-build-isolation -e .` so the extension builds against the torch
already installed. ninja does the compiling (BuildExtension(use_ninja=True); `pip install ninja`
if it is missing). The build is stamped with a hash of csrc/'s sources (REPLAB_SOURCES_HASH), so
that importing a stale build fails with the command to rebuild (replab_fast/_extension.py).
REPLAB_NO_CUDA=1 forces the CPU-only build on a CUDA machine.
"""

import glob
import importlib.util
import os

from setuptools import setup

DEFAULT_CUDA_ARCHS = "8.0;9.0"  # A100 and H100/H200, when no GPU is visible to pick from


def _sources_hash() -> int:
    """csrc/'s hash, from replab_fast/_sources_hash.py loaded by path (no package import)."""
    spec = importlib.util.spec_from_file_location("_replab_sources_hash", "replab_fast/_sources_hash.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.sources_hash("csrc") or 0


def extension_modules():
    cpp_sources = sorted(glob.glob("csrc/*.cpp"))
    cuda_sources = sorted(glob.glob("csrc/*.cu"))
    if not cpp_sources and not cuda_sources:
        return [], {}

    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    use_cuda = (
        bool(cuda_sources)
        and torch.version.cuda is not None
        and CUDA_HOME is not None
        and os.environ.get("REPLAB_NO_CUDA", "") not in ("1", "true", "yes")
    )
    macros = [("REPLAB_SOURCES_HASH", f"{_sources_hash()}ULL")]
    # -fopenmp: at::parallel_for runs on OpenMP in torch's builds. -fno-trapping-math: no FP
    # exception traps are enabled (the default environment), so GCC may if-convert and vectorize
    # branchless selects such as the CPU tanh's (csrc/conv2d.cpp, FastTanh); results are unchanged.
    cxx_flags = ["-O3", "-std=c++17", "-fopenmp", "-fno-trapping-math"]
    if use_cuda:
        if not torch.cuda.is_available():
            os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)
        # No --use_fast_math: tanh, division and denormals stay IEEE, so fp32 parity holds.
        ext = CUDAExtension(
            "replab_fast._C",
            cpp_sources + cuda_sources,
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-std=c++17", "-lineinfo"]},
            extra_link_args=["-fopenmp"],
            define_macros=macros + [("REPLAB_WITH_CUDA", "1")],
        )
    else:
        ext = CppExtension("replab_fast._C", cpp_sources, extra_compile_args={"cxx": cxx_flags},
                           extra_link_args=["-fopenmp"], define_macros=macros)
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = extension_modules()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
