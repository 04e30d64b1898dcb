"""Sweep the attention kernels' block sizes on a GPU (a tuning aid, not a benchmark of record).

    python -m bench.tune_attention [--quick] [--json PATH] [--budget S]

For bfloat16, B * T = 16384 tokens, H * D = 2048 (as bench/test_attention.py), causal, it times
``attention_forward`` / ``attention_backward`` with every candidate ``AttentionConfig`` next to
SDPA's flash backend, checks each candidate's output against SDPA (relative error, so a wrong
config cannot win), and prints TFLOP/s per candidate; decode (one token, Hq = 32, Hk = 8,
S = 32k) sweeps the number of key slices. The winners belong in ``attention_config``'s table.
Timing: ``triton.testing.do_bench`` (CUDA events, median). Nothing here runs on a CPU.
``--budget S``: no candidate starts after S seconds (make gpu-check's stage e); the JSON is
rewritten after every measurement, so a run stopped early keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F


def _candidates(D: int, quick: bool = False):
    """Every pairing of a forward and a backward block config; quick: each forward config with the
    first backward one and each backward config with the first forward one (one axis at a time)."""
    from replab_fast.kernels.attention.launch import AttentionConfig

    fwd = [(128, 64, 8, 3), (128, 128, 8, 2), (128, 64, 4, 3), (64, 64, 4, 3), (128, 32, 4, 4)]
    bwd = [(32, 128, 8, 2), (32, 128, 4, 3), (16, 128, 8, 2), (32, 64, 4, 3), (64, 128, 8, 2)]
    if D <= 64:
        fwd += [(128, 128, 8, 3)]
    for i, (bm, bn, w, st) in enumerate(fwd):
        for j, (bbm, bbn, bw, bst) in enumerate(bwd):
            if quick and i and j:
                continue
            yield AttentionConfig(bm, bn, w, st, bbm, bbn, bw, 64, decode=False, bwd_num_stages=bst)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="T = 4096, D = 128 only, one config axis at a time")
    parser.add_argument("--json", default=None, help="write every measurement here")
    parser.add_argument("--budget", type=float, default=None, help="start no candidate after this many seconds")
    args = parser.parse_args(argv)
    started = time.monotonic()

    def out_of_time() -> bool:
        return args.budget is not None and time.monotonic() - started > args.budget

    if not torch.cuda.is_available():
        print("tune_attention needs a CUDA device", file=sys.stderr)
        return 2
    import triton.testing
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from replab_fast.kernels.attention.launch import AttentionConfig, attention_backward, attention_forward

    rows = []
    device = torch.device("cuda")
    meta = dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__, budget_s=args.budget)

    def save(complete: bool) -> None:
        if args.json:
            with open(args.json + ".tmp", "w") as f:
                json.dump(dict(meta, complete=complete, elapsed_s=round(time.monotonic() - started, 1), rows=rows),
                          f, indent=1)  # fmt: skip
            os.replace(args.json + ".tmp", args.json)

    shapes = [(4096, 128)] if args.quick else [(2048, 128), (4096, 128), (8192, 128), (4096, 64)]
    for T, D in shapes:
        B, H = 16384 // T, 2048 // D
        g = torch.Generator(device=device).manual_seed(0)
        q, k, v, do = (torch.randn(B, T, H, D, generator=g, device=device, dtype=torch.bfloat16) for _ in range(4))
        fwd_flops = 4 * B * H * T * T * D / 2  # causal

        def sdpa():
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return F.scaled_dot_product_attention(
                    q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
                ).transpose(1, 2)

        expected = sdpa()
        ms = triton.testing.do_bench(sdpa, return_mode="median")
        rows.append(dict(T=T, D=D, provider="sdpa-flash", mode="forward", ms=ms, tflops=fwd_flops / ms / 1e9))
        print(f"T={T} D={D} sdpa-flash forward {ms:.3f} ms {fwd_flops / ms / 1e9:.0f} TFLOP/s", flush=True)
        seen_fwd = set()
        for cfg in _candidates(D, quick=args.quick):
            if out_of_time():
                print(f"  budget of {args.budget:.0f} s used up: the remaining candidates are not measured", flush=True)
                break
            save(complete=False)
            try:
                fwd_key = (cfg.block_m, cfg.block_n, cfg.num_warps, cfg.num_stages)
                out, lse = attention_forward(q, k, v, True, None, config=cfg)
                err = ((out.float() - expected.float()).norm() / expected.float().norm()).item()
                if not err < 1e-2:
                    print(f"  {cfg}: WRONG (relative error {err:.3g})", flush=True)
                    continue
                if fwd_key not in seen_fwd:
                    seen_fwd.add(fwd_key)
                    ms = triton.testing.do_bench(lambda: attention_forward(q, k, v, True, None, config=cfg),
                                                 return_mode="median")  # fmt: skip
                    rows.append(dict(T=T, D=D, provider="replab_fast", mode="forward", config=repr(cfg), ms=ms,
                                     tflops=fwd_flops / ms / 1e9, rel_err=err))  # fmt: skip
                    tflops = fwd_flops / ms / 1e9
                    print(f"  fwd {fwd_key}: {ms:.3f} ms {tflops:.0f} TFLOP/s (err {err:.1e})", flush=True)
                ms = triton.testing.do_bench(
                    lambda: attention_backward(do, q, k, v, out, lse, True, None, config=cfg), return_mode="median"
                )
                bwd_flops = 2.5 * fwd_flops
                bwd_key = (cfg.bwd_block_m, cfg.bwd_block_n, cfg.bwd_num_warps, cfg.bwd_num_stages)
                rows.append(dict(T=T, D=D, provider="replab_fast", mode="backward", config=repr(cfg), ms=ms,
                                 tflops=bwd_flops / ms / 1e9))  # fmt: skip
                print(f"  bwd {bwd_key} (fwd {fwd_key}): {ms:.3f} ms {bwd_flops / ms / 1e9:.0f} TFLOP/s", flush=True)
            except Exception as err:  # a config that does not fit (shared memory, registers): report, go on
                print(f"  {cfg}: failed: {str(err).splitlines()[0] if str(err) else type(err).__name__}", flush=True)
    # Decode: one token per sequence, GQA 32/8, D = 128, S = 32k; slices of the keys.
    for B in (1, 16):
        S, Hq, Hk, D = 32768, 32, 8, 128
        g = torch.Generator(device=device).manual_seed(1)
        q = torch.randn(B, 1, Hq, D, generator=g, device=device, dtype=torch.bfloat16)
        k, v = (torch.randn(B, S, Hk, D, generator=g, device=device, dtype=torch.bfloat16) for _ in range(2))
        bytes_kv = 2 * B * S * Hk * D * 2
        for splits in (None, 8, 16, 32, 64, 128):
            if out_of_time():
                break
            save(complete=False)
            cfg = AttentionConfig(128, 64, 8, 3, 32, 128, 8, 64, decode=True, num_splits=splits)
            ms = triton.testing.do_bench(
                lambda: attention_forward(q, k, v, True, None, config=cfg), return_mode="median"
            )
            rows.append(dict(B=B, S=S, provider="replab_fast", mode="decode", splits=splits, ms=ms,
                             gbps=bytes_kv / ms / 1e6))  # fmt: skip
            print(f"decode B={B} S={S} splits={splits}: {ms * 1e3:.1f} us {bytes_kv / ms / 1e6:.0f} GB/s", flush=True)
    save(complete=not out_of_time())
    return 0 if rows and all(math.isfinite(r["ms"]) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
