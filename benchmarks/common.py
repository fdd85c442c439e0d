"""Timing, device peaks and environment description shared by the benchmark scripts."""
import math
import platform
import statistics
import time
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import torch


def median_ms(fn: Callable[[], object], device: str, *, warmup: int = 3, reps: int = 10,
              cuda_graph: bool = False) -> float:
    """Median wall time of ``fn()`` in ms: CUDA events (optionally a captured CUDA graph, for
    microsecond kernels) on CUDA, ``perf_counter`` on CPU."""
    if device == "cuda":
        import triton.testing

        if cuda_graph:
            return float(triton.testing.do_bench_cudagraph(fn, rep=max(reps, 20), return_mode="median"))
        return float(triton.testing.do_bench(fn, warmup=max(warmup, 25), rep=max(reps, 100), return_mode="median"))
    for _ in range(warmup):
        fn()
    times: List[float] = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def peak_memory_mb(fn: Callable[[], object], device: str) -> float:
    """Peak device memory allocated while running ``fn`` once (CUDA only; NaN on CPU)."""
    if device != "cuda":
        return float("nan")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def measure_peaks(device: str, quick: bool = True) -> Dict[str, float]:
    """Measured (not datasheet) ceilings: copy bandwidth in GB/s (bytes read + written) and matrix
    throughput in TFLOP/s (bf16 on CUDA, fp32 on CPU)."""
    n = (1 << 28 if device == "cuda" else 1 << 24)
    src = torch.empty(n, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src), device, reps=20 if device == "cuda" else 5)
    copy_gbps = 2 * src.numel() * 4 / (ms * 1e-3) / 1e9
    m = 8192 if device == "cuda" else (512 if quick else 1024)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    a = torch.randn(m, m, device=device, dtype=dtype)
    b = torch.randn(m, m, device=device, dtype=dtype)
    ms = median_ms(lambda: a @ b, device, reps=20 if device == "cuda" else 5)
    return {"copy_GBps": copy_gbps, "matmul_TFLOPs": 2 * m**3 / (ms * 1e-3) / 1e12,
            "matmul_dtype": str(dtype).replace("torch.", "")}


def environment(device: str) -> Dict[str, str]:
    env = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform()}
    try:
        import triton

        env["triton"] = triton.__version__
    except Exception as exc:  # pragma: no cover
        env["triton"] = f"unavailable ({exc})"
    if device == "cuda":
        env["device"] = torch.cuda.get_device_name()
        env["cuda"] = str(torch.version.cuda)
    else:
        env["device"] = f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    return env


def format_cell(v) -> str:
    """A table cell: floats to 3 significant digits (NaN as '–'), anything else as ``str``."""
    if isinstance(v, float):
        if math.isnan(v):
            return "–"
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def markdown_table(rows: Iterable[Dict], cols: Optional[Sequence[str]] = None) -> str:
    """Rows of dicts as a Markdown table; ``cols`` defaults to every key, in first-seen order."""
    rows = list(rows)
    if cols is None:
        cols = []
        for r in rows:
            cols += [c for c in r if c not in cols]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(format_cell(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)
