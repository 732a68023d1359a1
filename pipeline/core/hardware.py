"""What the machine computes natively (bf16 on CPU), read from /proc/cpuinfo."""

from __future__ import annotations

import os
from pathlib import Path

# PyTorch's kernel choice capped below AVX-512 (ATEN_CPU_CAPABILITY=avx2 or default): the process computes as an
# AVX2-only CPU would, so it must not choose bf16 either (tests/README.md: running the suite "as AVX2")
_CAPPED = {"default", "avx2"}


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (avx512_bf16 or AMX). Without it vLLM-CPU emulates bf16 and
    runs many times slower than float32 (measured: the demo teacher wrote nothing in 37 minutes on an AVX2 EPYC)."""
    if os.environ.get("ATEN_CPU_CAPABILITY", "").lower() in _CAPPED:
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
