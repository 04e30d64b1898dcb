"""Build: the package, plus the C++/CUDA extension from csrc/ when csrc/ holds sources.

With sources in csrc/: a CUDAExtension when the installed torch has CUDA and nvcc is found,
otherwise a CPU-only CppExtension. TORCH_CUDA_ARCH_LIST is honoured; with no GPU visible,
torch's builder needs it, so it defaults to DEFAULT_CUDA_ARCHS. CUDA_HOME is honoured; unset, it
is found from nvcc (see _find_cuda_home).

The C++ standard is the one the torch we build against asks for: no ``-std`` flag is given
here, so torch's own BuildExtension adds its default for both the host compiler and nvcc
(C++20 from torch 2.13 on, whose ATen headers refuse C++17 from 2.14 on). Our sources compile
as C++17 and as C++20 (``make cuda-compile-check`` checks both).

``pip install -e .`` builds in an isolated environment with the newest supported torch (a CUDA
build of several GB); ``pip install --no-build-isolation -e .`` builds against the torch already
installed. ninja does the compiling (BuildExtension(use_ninja=True)). The build is stamped with
a hash of csrc/'s sources (REPLAB_SOURCES_HASH), and the torch version it was built against is
written next to the library (``_C_build.json``), so that importing
a stale build, or a build made for another torch, fails with the command to rebuild
(replab_fast/_extension.py). REPLAB_NO_CUDA=1 forces the CPU-only build on a CUDA machine.
"""

import glob
import importlib.util
import json
import os
import shutil

from setuptools import setup

DEFAULT_CUDA_ARCHS = "8.0;9.0"  # A100 and H100/H200, when no GPU is visible to pick from
BUILD_INFO = "_C_build.json"  # next to the built library: what it was built against


def _load_by_path(name: str, path: str):
    """A standalone helper module of the package, loaded by path (no package import)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sources_hash() -> int:
    """csrc/'s hash, from replab_fast/_sources_hash.py."""
    return _load_by_path("_replab_sources_hash", "replab_fast/_sources_hash.py").sources_hash("csrc") or 0


def _build_ext_class(torch_version: str, with_cuda: bool, sources_hash: int):
    """torch's BuildExtension (ninja), which also writes BUILD_INFO next to the built library."""
    from torch.utils.cpp_extension import BuildExtension

    base = BuildExtension.with_options(use_ninja=True)

    class BuildExtensionWithInfo(base):
        def run(self) -> None:
            super().run()  # builds, then copies the library into the source tree when inplace (editable)
            info = {"torch": torch_version, "with_cuda": with_cuda, "sources_hash": sources_hash}
            for ext in self.extensions:  # get_ext_fullpath: the source tree when inplace, else build_lib
                path = os.path.join(os.path.dirname(self.get_ext_fullpath(ext.name)), BUILD_INFO)
                with open(path, "w") as f:
                    json.dump(info, f)

    return BuildExtensionWithInfo


def _find_cuda_home() -> None:
    """Point CUDA_HOME at a CUDA toolkit with its runtime library, unless the user set it.

    torch's builder takes the folder above the first nvcc on PATH; where that nvcc is a wrapper
    script (e.g. /usr/local/bin/nvcc exec-ing /usr/local/cuda-13.0/bin/nvcc) that folder has no
    libcudart and the link fails. Then the toolkit under /usr/local/cuda is used, if it has one.
    Runs before torch.utils.cpp_extension is imported (it reads CUDA_HOME at import).
    """
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    nvcc = shutil.which("nvcc")
    candidates = [os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))] if nvcc else []
    candidates.append("/usr/local/cuda")
    for home in candidates:
        if glob.glob(os.path.join(home, "lib*", "libcudart.so*")) and os.path.exists(os.path.join(home, "bin", "nvcc")):
            os.environ["CUDA_HOME"] = home
            return


def extension_modules():
    cpp_sources = sorted(glob.glob("csrc/*.cpp"))
    cuda_sources = sorted(glob.glob("csrc/*.cu"))
    if not cpp_sources and not cuda_sources:
        return [], {}

    _find_cuda_home()
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, CppExtension, CUDAExtension

    use_cuda = (
        bool(cuda_sources)
        and torch.version.cuda is not None
        and CUDA_HOME is not None
        and os.environ.get("REPLAB_NO_CUDA", "") not in ("1", "true", "yes")
    )
    sources_hash = _sources_hash()
    macros = [("REPLAB_SOURCES_HASH", f"{sources_hash}ULL")]
    # -fopenmp: at::parallel_for runs on OpenMP in torch's builds. -fno-trapping-math: no FP
    # exception traps are enabled (the default environment), so GCC may if-convert and vectorize
    # branchless selects such as the CPU tanh's (csrc/conv2d_cpu.h, FastTanh); results are unchanged.
    cxx_flags = ["-O3", "-fopenmp", "-fno-trapping-math"]
    if use_cuda:
        if not torch.cuda.is_available():
            os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)
        # No --use_fast_math: tanh, division and denormals stay IEEE, so fp32 parity holds.
        ext = CUDAExtension(
            "replab_fast._C",
            cpp_sources + cuda_sources,
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-lineinfo"]},
            extra_link_args=["-fopenmp"],
            define_macros=macros + [("REPLAB_WITH_CUDA", "1")],
        )
    else:
        ext = CppExtension("replab_fast._C", cpp_sources, extra_compile_args={"cxx": cxx_flags},
                           extra_link_args=["-fopenmp"], define_macros=macros)
    return [ext], {"build_ext": _build_ext_class(torch.__version__, use_cuda, sources_hash)}


ext_modules, cmdclass = extension_modules()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
