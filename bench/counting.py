"""What one call of a case uses, counted: its peak device memory and its FLOPs.

Nothing here runs at import: no CUDA call, no compilation, no global setting.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch

__all__ = ["peak_memory", "count_flops"]


def peak_memory(fn: Callable[[], Any], device: torch.device) -> tuple[Optional[int], Optional[int]]:
    """(peak allocated bytes during one call of ``fn``, peak minus what was allocated before).

    CUDA only (``torch.cuda.max_memory_allocated``); (None, None) on a CPU.
    """
    if device.type != "cuda":
        return None, None
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    return int(peak), int(peak - base)


def count_flops(fn: Callable[[], Any]) -> Optional[int]:
    """FLOPs of one call, counted by torch.utils.flop_counter (matmuls, convolutions, attention).

    Run it on the eager reference: the count is the math's, the same for every provider.
    """
    try:
        from torch.utils.flop_counter import FlopCounterMode
    except ImportError:  # pragma: no cover - torch >= 2.1 has it
        return None
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())
