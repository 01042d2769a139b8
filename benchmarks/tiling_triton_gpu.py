"""Tiling pass on a real GPU: Triton's tutorial matmul with the chosen config vs autotuning.

Needs a CUDA GPU, torch with CUDA and triton; without them it prints that it skipped and
exits 0. For each large GEMM it solves the tile with `mapper.passes.tiling` restricted to
what Triton's tutorial kernel runs as-is (`triton_only`: no split-K, not persistent), runs
the tutorial kernel (03-matrix-multiplication, written out below) with that config, and
runs every config of the tutorial's CUDA autotune list (what `@triton.autotune` would try)
to find the best. Reports ours / best (acceptance: >= 0.9), cuBLAS (torch.matmul) for
reference, and the cost model's predicted TFLOP/s next to the measured ones (calibration).

    python -m benchmarks.tiling_triton_gpu [--hw h100] [--out table.md] [--rep 200]

The hardware model is picked from the device name (H100, H200, A100, L4, L40S, V100, T4,
B200) unless --hw is given.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# (BLOCK_SIZE_M, BLOCK_SIZE_N, BLOCK_SIZE_K, GROUP_SIZE_M, num_warps, num_stages): the CUDA
# autotune list of Triton's tutorial 03-matrix-multiplication (fp16 configs, then the ones
# it marks "good for fp8 inputs").
TUTORIAL_CONFIGS = (
    (128, 256, 64, 8, 8, 3), (64, 256, 32, 8, 4, 4), (128, 128, 32, 8, 4, 4),
    (128, 64, 32, 8, 4, 4), (64, 128, 32, 8, 4, 4), (128, 32, 32, 8, 4, 4),
    (64, 32, 32, 8, 2, 5), (32, 64, 32, 8, 2, 5),
    (128, 256, 128, 8, 8, 3), (256, 128, 128, 8, 8, 3), (256, 64, 128, 8, 4, 4),
    (64, 256, 128, 8, 4, 4), (128, 128, 128, 8, 4, 4), (128, 64, 64, 8, 4, 4),
    (64, 128, 64, 8, 4, 4), (128, 32, 64, 8, 4, 4),
)
PROBLEMS = (("fp16", 4096, 4096, 4096), ("fp16", 8192, 8192, 8192),
            ("fp16", 16384, 4096, 4096), ("fp16", 4096, 14336, 4096),
            ("bf16", 8192, 8192, 8192), ("bf16", 6144, 17920, 2816))


def _ensure_mapper_importable() -> None:
    """Let the script run from a bare checkout: map mapper.passes / mapper.hwmodels to their
    folders as the installed package does (pip install -e . makes this a no-op)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import mapper

    for name, folder in (("mapper.hwmodels", "hwmodels"), ("mapper.passes", "passes")):
        if importlib.util.find_spec(name) is None:
            spec = importlib.util.spec_from_file_location(
                name, ROOT / folder / "__init__.py",
                submodule_search_locations=[str(ROOT / folder)])
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
            setattr(mapper, name.split(".")[1], module)


def _skip(reason: str) -> None:
    print(f"tiling_triton_gpu: skipped: {reason}")
    sys.exit(0)


def _kernel() -> Any:
    import triton
    import triton.language as tl

    @triton.jit
    def matmul_kernel(a_ptr, b_ptr, c_ptr, M, N, K, stride_am, stride_ak, stride_bk, stride_bn,
                      stride_cm, stride_cn, BLOCK_SIZE_M: tl.constexpr,
                      BLOCK_SIZE_N: tl.constexpr, BLOCK_SIZE_K: tl.constexpr,
                      GROUP_SIZE_M: tl.constexpr):
        # Grouped ordering of the tutorial: GROUP_SIZE_M rows of tiles share B panels in L2.
        pid = tl.program_id(axis=0)
        num_pid_m = tl.cdiv(M, BLOCK_SIZE_M)
        num_pid_n = tl.cdiv(N, BLOCK_SIZE_N)
        num_pid_in_group = GROUP_SIZE_M * num_pid_n
        group_id = pid // num_pid_in_group
        first_pid_m = group_id * GROUP_SIZE_M
        group_size_m = min(num_pid_m - first_pid_m, GROUP_SIZE_M)
        pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
        pid_n = (pid % num_pid_in_group) // group_size_m
        offs_am = (pid_m * BLOCK_SIZE_M + tl.arange(0, BLOCK_SIZE_M)) % M
        offs_bn = (pid_n * BLOCK_SIZE_N + tl.arange(0, BLOCK_SIZE_N)) % N
        offs_k = tl.arange(0, BLOCK_SIZE_K)
        a_ptrs = a_ptr + (offs_am[:, None] * stride_am + offs_k[None, :] * stride_ak)
        b_ptrs = b_ptr + (offs_k[:, None] * stride_bk + offs_bn[None, :] * stride_bn)
        acc = tl.zeros((BLOCK_SIZE_M, BLOCK_SIZE_N), dtype=tl.float32)
        for k in range(0, tl.cdiv(K, BLOCK_SIZE_K)):
            a = tl.load(a_ptrs, mask=offs_k[None, :] < K - k * BLOCK_SIZE_K, other=0.0)
            b = tl.load(b_ptrs, mask=offs_k[:, None] < K - k * BLOCK_SIZE_K, other=0.0)
            acc = tl.dot(a, b, acc)
            a_ptrs += BLOCK_SIZE_K * stride_ak
            b_ptrs += BLOCK_SIZE_K * stride_bk
        c = acc.to(c_ptr.dtype.element_ty)
        offs_cm = pid_m * BLOCK_SIZE_M + tl.arange(0, BLOCK_SIZE_M)
        offs_cn = pid_n * BLOCK_SIZE_N + tl.arange(0, BLOCK_SIZE_N)
        c_ptrs = c_ptr + stride_cm * offs_cm[:, None] + stride_cn * offs_cn[None, :]
        tl.store(c_ptrs, c, mask=(offs_cm[:, None] < M) & (offs_cn[None, :] < N))

    return matmul_kernel


def _run(kernel: Any, a: Any, b: Any, c: Any, config: tuple[int, ...]) -> None:
    import triton

    bm, bn, bk, group, warps, stages = config
    m, k = a.shape
    _, n = b.shape
    grid = (triton.cdiv(m, bm) * triton.cdiv(n, bn),)
    kernel[grid](a, b, c, m, n, k, a.stride(0), a.stride(1), b.stride(0), b.stride(1),
                 c.stride(0), c.stride(1), BLOCK_SIZE_M=bm, BLOCK_SIZE_N=bn, BLOCK_SIZE_K=bk,
                 GROUP_SIZE_M=group, num_warps=warps, num_stages=stages)


def _tflops(flops: float, ms: float) -> float:
    return flops / (ms * 1e-3) / 1e12


def _bench(operands: tuple[Any, ...], config: tuple[int, ...], flops: float, rep: int
           ) -> float | None:
    """Median TFLOP/s of the tutorial kernel with `config` (None: fails or is wrong)."""
    import torch
    import triton.testing

    kernel, a, b, c, reference = operands
    try:
        _run(kernel, a, b, c, config)
        torch.cuda.synchronize()
        if not torch.allclose(c.float(), reference.float(), rtol=2e-2, atol=1.0):
            print(f"  config {config} gives wrong results")
            return None
        ms = triton.testing.do_bench(lambda: _run(kernel, a, b, c, config), warmup=25, rep=rep,
                                     quantiles=[0.5])
        return _tflops(flops, float(ms[0] if isinstance(ms, list | tuple) else ms))
    except Exception as error:  # a config the device cannot run (out of resources)
        print(f"  config {config} failed: {type(error).__name__}: {error}"[:300])
        return None


def measure(hw_name: str, rep: int) -> tuple[list[dict[str, Any]], str]:
    """Run every problem: ours, every tutorial config, cuBLAS; rows and the device name."""
    import torch
    import triton.testing

    from mapper.hwmodels.loader import load_hardware
    from mapper.options import TilingConfig
    from mapper.passes.tiling import tile_problem
    from mapper.passes.tiling.problems import GemmProblem

    hw = load_hardware(hw_name)
    kernel = _kernel()
    torch_dtypes = {"fp16": torch.float16, "bf16": torch.bfloat16}
    rows = []
    for dtype, m, n, k in PROBLEMS:
        record = tile_problem(hw, GemmProblem.dense(m, n, k, dtype),
                              TilingConfig(triton_only=True))
        t = record["triton"]
        ours = (t["BLOCK_SIZE_M"], t["BLOCK_SIZE_N"], t["BLOCK_SIZE_K"], t["GROUP_SIZE_M"],
                t["num_warps"], t["num_stages"])
        a = torch.randn((m, k), device="cuda", dtype=torch_dtypes[dtype])
        b = torch.randn((k, n), device="cuda", dtype=torch_dtypes[dtype])
        c = torch.empty((m, n), device="cuda", dtype=torch_dtypes[dtype])
        flops = 2.0 * m * n * k
        reference = torch.matmul(a, b)
        operands = (kernel, a, b, c, reference)
        ours_tf = _bench(operands, config=ours, flops=flops, rep=rep)
        tried = {config: _bench(operands, config=config, flops=flops, rep=rep)
                 for config in TUTORIAL_CONFIGS}
        best_config, best_tf = max(((cfg, tf) for cfg, tf in tried.items() if tf),
                                   key=lambda item: item[1], default=(None, None))
        cublas_ms = triton.testing.do_bench(partial(torch.matmul, a, b), warmup=25, rep=rep,
                                            quantiles=[0.5])
        cublas_tf = _tflops(flops, float(cublas_ms[0] if isinstance(cublas_ms, list | tuple)
                                         else cublas_ms))
        rows.append({"dtype": dtype, "shape": (m, n, k), "ours": ours, "ours_tf": ours_tf,
                     "best": best_config, "best_tf": best_tf, "cublas_tf": cublas_tf,
                     "model_tf": flops / record["est_time_s"] / 1e12})
        print(rows[-1], flush=True)
        del a, b, c, reference, operands
        torch.cuda.empty_cache()
    return rows, torch.cuda.get_device_name()


def _fmt_config(config: tuple[int, ...] | None) -> str:
    if config is None:
        return "-"
    bm, bn, bk, group, warps, stages = config
    return f"{bm}x{bn}x{bk} g{group} w{warps} s{stages}"


def table(rows: list[dict[str, Any]], device: str, hw_name: str) -> str:
    """The RESULTS.md body."""
    lines = ["| GEMM (M x N x K) | dtype | chosen config | chosen TFLOP/s | autotune best config "
             "| best TFLOP/s | chosen / best | cuBLAS TFLOP/s | model TFLOP/s | model / "
             "measured |", "|---|---|---|---|---|---|---|---|---|---|"]
    ratios = []
    for row in rows:
        ratio = row["ours_tf"] / row["best_tf"] if row["ours_tf"] and row["best_tf"] else None
        if ratio:
            ratios.append(ratio)
        measured = row["ours_tf"] or row["best_tf"]
        lines.append(
            f"| {'x'.join(map(str, row['shape']))} | {row['dtype']} | {_fmt_config(row['ours'])}"
            f" | {row['ours_tf'] or 0:.1f} | {_fmt_config(row['best'])} | "
            f"{row['best_tf'] or 0:.1f}"
            f" | {ratio if ratio else float('nan'):.3f} | {row['cublas_tf']:.1f} | "
            f"{row['model_tf']:.1f} | "
            f"{row['model_tf'] / measured if measured else float('nan'):.2f} |")
    geo = math.exp(sum(math.log(r) for r in ratios) / len(ratios)) if ratios else float("nan")
    worst = min(ratios) if ratios else float("nan")
    return (f"Device: {device} (hardware model `{hw_name}`). Triton's tutorial matmul kernel run "
            "with the config the tiling pass chose (`triton_only`: no split-K, not persistent) "
            f"against every config of the tutorial's CUDA autotune list ({len(TUTORIAL_CONFIGS)}"
            " configs; 'best' is what autotuning picks), median of `triton.testing.do_bench`. "
            f"Acceptance: chosen >= 0.9 x best.\n\n**chosen / best: geomean {geo:.3f}, worst "
            f"{worst:.3f}.**\n\n" + "\n".join(lines)
            + "\n\nReproduce (on a GPU machine): `python -m benchmarks.tiling_triton_gpu`")


def main() -> None:
    """Measure, print the table and write the RESULTS.md section (skip without a GPU)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hw", help="hardware model to solve for (default: from device name)")
    parser.add_argument("--out", type=Path, help="also write the markdown table here")
    parser.add_argument("--rep", type=int, default=200, help="do_bench repetition time, ms")
    args = parser.parse_args()
    try:
        import torch
    except ImportError:
        _skip("torch is not installed")
    if not torch.cuda.is_available():
        _skip("no CUDA GPU is available")
    try:
        import triton  # noqa: F401
    except ImportError:
        _skip("triton is not installed")
    _ensure_mapper_importable()
    from mapper.probe_gpu import hardware_for

    properties = torch.cuda.get_device_properties(0)
    hw_name = args.hw or hardware_for(properties.name, properties.total_memory)
    if hw_name is None:
        _skip(f"no hardware model matches {properties.name!r}; pass --hw")
    rows, device = measure(hw_name, args.rep)
    body = table(rows, device, hw_name)
    print(body)
    if args.out:
        args.out.write_text(body + "\n")
    from benchmarks.results import update_section

    update_section("tiling-triton-gpu", "Tiling: chosen config vs Triton autotune on a GPU", body)


if __name__ == "__main__":
    main()
