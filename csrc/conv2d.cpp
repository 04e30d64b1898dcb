// replab_fast::conv2d's registration: the op schemas (TORCH_LIBRARY, once), the CPU kernels'
// registration (TORCH_LIBRARY_IMPL(replab_fast, CPU, ...)) and the _C module's init.
//
// The layout follows pytorch/extension-cpp: the schema is defined here once, each backend
// registers its implementation, and the Python side (replab_fast/kernels/conv2d.py) adds the
// fake (meta) implementation and the autograd formula with torch.library.register_fake /
// register_autograd. The namespace is replab_fast, shared with the Triton ops that Python
// registers as fragments (custom_op / triton_op); this file holds the namespace's only
// TORCH_LIBRARY block.
//
// Ops (math in conv2d.h):
//   conv2d(x, weight, bias?, stride, padding, dilation, groups, activation, pool, pool_kernel,
//          pool_stride, save_preact) -> (out, preact)
//     out = pool(act(conv(x, weight) + bias)); preact = conv(x, weight) + bias when save_preact
//     and an activation or pooling is fused (the backward needs it), else an empty tensor (0,).
//   conv2d_backward(grad_out, x, weight, preact, stride, padding, dilation, groups, activation,
//                   pool, pool_kernel, pool_stride, output_mask) -> (grad_x, grad_weight, grad_bias)
//     The gradients through the pooling (max: to the first maximum of each window in row-major
//     order, recomputed from preact; avg: evenly), the activation and the convolution. A
//     gradient not asked for in output_mask is returned as an empty tensor (0,).
//
// Where the code lives: the argument checks in conv2d_checks.cpp, the CPU kernels in
// conv2d_cpu_forward.cpp and conv2d_cpu_backward.cpp (their shared helpers in conv2d_cpu.h), the
// CUDA kernels in conv2d_cuda*.cu (TORCH_LIBRARY_IMPL(replab_fast, CUDA, ...) in conv2d_cuda.cu).
#include <Python.h>

#include <torch/library.h>

#include "conv2d_cpu.h"

// The build stamps a hash of csrc/'s sources (setup.py); replab_fast/_extension.py compares it
// with the sources it finds next to the package to refuse a stale build.
#ifndef REPLAB_SOURCES_HASH
#define REPLAB_SOURCES_HASH 0
#endif
#ifndef REPLAB_WITH_CUDA
#define REPLAB_WITH_CUDA 0
#endif

extern "C" {
// An empty Python module: importing replab_fast._C loads this library, which runs the
// TORCH_LIBRARY static initializers below. Two constants describe the build.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C",  // name
      "replab_fast's C++/CUDA extension: registers torch.ops.replab_fast.conv2d*",  // doc
      -1,       // no per-interpreter state
      nullptr,  // methods
      nullptr,  // slots
      nullptr,  // traverse
      nullptr,  // clear
      nullptr,  // free
  };
  PyObject* module = PyModule_Create(&module_def);
  if (module == nullptr) return nullptr;
  if (PyModule_AddObject(module, "SOURCES_HASH", PyLong_FromUnsignedLongLong(REPLAB_SOURCES_HASH)) < 0 ||
      PyModule_AddIntConstant(module, "WITH_CUDA", REPLAB_WITH_CUDA) < 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
}

namespace replab_fast {

// The namespace's one TORCH_LIBRARY block (the Triton ops of replab_fast/kernels/ are
// registered from Python into the same namespace as fragments).
TORCH_LIBRARY(replab_fast, m) {
  m.def(
      "conv2d(Tensor x, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, int[2] dilation, int groups, "
      "str activation, str pool, int[2] pool_kernel, int[2] pool_stride, bool save_preact) -> (Tensor, Tensor)");
  m.def(
      "conv2d_backward(Tensor grad_out, Tensor x, Tensor weight, Tensor preact, int[2] stride, int[2] padding, "
      "int[2] dilation, int groups, str activation, str pool, int[2] pool_kernel, int[2] pool_stride, "
      "bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(replab_fast, CPU, m) {
  m.impl("conv2d", &conv2d_cpu);
  m.impl("conv2d_backward", &conv2d_backward_cpu);
}

}  // namespace replab_fast
