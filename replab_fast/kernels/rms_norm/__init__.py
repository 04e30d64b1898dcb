"""RMSNorm, and residual-add + RMSNorm, as Triton kernels.

Math (Zhang & Sennrich 2019, "Root Mean Square Layer Normalization"; the reference is
``replab_fast.models.llama.RMSNorm``, Meta's LLaMA RMSNorm), per row x of N elements:

    rstd = 1 / sqrt(mean(x^2) + eps)                  fp32 (fp64 for fp64 inputs)
    y    = x * rstd * w                               returned in promote(x.dtype, w.dtype)

Backward, with g = dy * w:

    dx = rstd * g - x * rstd^3 * mean(g * x)
    dw = sum over rows of dy * x * rstd

Fused residual add (``rms_norm_residual``): h = x + residual, rounded to x's dtype exactly as
``torch.add`` rounds it, then y = rmsnorm(h); both y and h are returned. The gradient reaching h
is the norm's backward plus the gradient of h's other use (the residual stream), and it is the
gradient of both x and residual.

Reference vs kernel: the reference rounds x * rstd to x's dtype before multiplying by w (Meta's
``norm(x.float()).type_as(x) * weight``); the kernel rounds once, at the end (more accurate; the
tests hold it to the 2x rule against the reference run at the same dtype). rstd is not saved
by the forward: the backward recomputes it from the row it loads anyway.

Layout: x (..., N) is viewed as (M, N) rows. Leading dimensions that collapse to one row stride
(any contiguous tensor, a slice of wider rows, ...) are read in place through that stride;
anything else (and an x whose last dimension is strided) is copied to contiguous rows first.
Outputs are contiguous.

Performance plan (H100/H200; GPU verification pending, see bench/test_rms_norm.py). Bytes are
the floor: forward reads x and writes y once; backward reads x and dy and writes dx once.
- forward: one program per BLOCK_M rows (several rows for narrow N, so that a program moves
  >= 4 KB), the whole row in registers up to N = 16384 with num_warps scaled to the block,
  16-byte loads; wider rows in chunks (sum of squares, then normalize: x is read twice).
- backward: a persistent grid of as many programs as fit at once (1 to 4 per SM), each walking
  row tiles and keeping its dweight partial sum in registers; the (programs, N) partials are
  reduced by a small second kernel. No atomics. Up to N = 8192 a row is one block; up to 16384
  one program takes it in two blocks (the second processed while in registers, the first re-read
  from L1/L2); wider rows get a row-statistics kernel first (x and dy read twice).
- what ptxas makes of it is checked without a GPU (tests ``test_compiled_path_builds_for_hopper``:
  sm_90 builds, 16-byte loads, no spills except float32 backward at N = 16384, ~40 bytes/thread).

The package: ``kernel.py`` (the ``@triton.jit`` device code), ``launch.py`` (host launchers and
their block sizes), ``op.py`` (the ``torch.library`` ops with fake implementations and
autograd), ``reference.py`` (the plain-PyTorch reference). This ``__init__`` imports no triton;
the kernels run wherever ``replab_fast.kernels.triton_unusable_reason`` finds nothing against it.
"""
