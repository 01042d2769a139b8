"""An independent checker of every hardware constraint for an emitted kernel record.

It reads the limits straight from the hardware model and the record's own fields (nothing
from `gpu.py`/`accel.py` beyond the published constants of the modeled kernel), so a
solver bug that lets an infeasible config through is caught here. Used by the tests on
every kernel the pass emits, for every built-in hardware model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from mapper.hwmodels.schema import Hardware

_BITS = {"fp64": 64, "fp32": 32, "tf32": 32, "fp16": 16, "bf16": 16, "fp8": 8, "int16": 16,
         "int8": 8, "int4": 4, "fp4": 4}
_SIMT = ("fp32", "fp64")


def _pow2(value: int) -> bool:
    return value >= 1 and value & (value - 1) == 0


def check_record(record: Mapping[str, Any], hardware: Hardware) -> list[str]:
    """Every constraint the record violates on `hardware` (empty: the config is valid)."""
    if "BM" in record.get("tile", {}):
        return check_gpu(record, hardware)
    return check_accel(record, hardware)


def _operand_bits(record: Mapping[str, Any]) -> tuple[int, int, int]:
    bits = record.get("element_bits") or {}
    base = _BITS[record["dtype"]]
    return int(bits.get("a", base)), int(bits.get("b", base)), int(bits.get("c", base))


def check_gpu(record: Mapping[str, Any], hw: Hardware) -> list[str]:
    """Violations of a GPU kernel record: MMA shape, threads, shared memory, registers,
    occupancy, vector loads, split-K, Triton block rules, the contract's smem formula."""
    bad: list[str] = []
    limits = hw.kernel_limits
    if hw.kind != "gpu" or limits is None:
        return [f"{hw.name} is not a GPU with kernel limits"]
    dtype = record["dtype"]
    tile = record["tile"]
    prob = record["problem"]
    bm, bn, bk = tile["BM"], tile["BN"], tile["BK"]
    warps, stages, split = tile["warps"], tile["stages"], tile["split_k"]
    a_bits, b_bits, c_bits = _operand_bits(record)
    if not hw.peak(dtype):
        bad.append(f"{hw.name} has no {dtype} peak")
    shape = hw.compute.matrix_shapes.get(dtype)  # type: ignore[call-overload]
    if shape is None and dtype not in _SIMT:
        bad.append(f"{hw.name} has no {dtype} matrix shape and {dtype} is not a SIMT dtype")
    mm, mn, mk = (shape if shape is not None else (16, 16, 1))
    issuer = 4 if mm >= 64 else 1
    grid_m, grid_n = tile.get("warp_grid", [None, None])
    for name, value in (("BM", bm), ("BN", bn), ("BK", bk)):
        if not _pow2(value) or value < 16:
            bad.append(f"{name}={value} is not a power of two >= 16 (Triton block rule)")
    if bm % mm or bn % mn or bk % mk:
        bad.append(f"tile {bm}x{bn}x{bk} is not a multiple of the {dtype} MMA shape "
                   f"{mm}x{mn}x{mk}")
    if grid_m is None or grid_n is None or grid_m * grid_n * issuer != warps:
        bad.append(f"warp grid {grid_m}x{grid_n} x {issuer} warps per issuer != {warps} warps")
    elif bm % (grid_m * mm) or bn % (grid_n * mn):
        bad.append(f"warp grid {grid_m}x{grid_n} does not divide the tile into MMA shapes")
    threads = warps * limits.warp_size
    if threads > limits.max_threads_per_block:
        bad.append(f"{threads} threads > max_threads_per_block {limits.max_threads_per_block}")
    # The contract's formula, exactly.
    main = stages * (bm * bk * a_bits + bk * bn * b_bits) // 8
    if record["smem_bytes"] != main:
        bad.append(f"smem_bytes {record['smem_bytes']} != stages*(BM*BK+BK*BN)*size = {main}")
    epilogue = bm * bn * (32 if split > 1 else c_bits) // 8
    smem = main + epilogue if tile.get("persistent") else max(main, epilogue)
    if smem > limits.shared_memory_per_block:
        bad.append(f"shared memory {smem} > shared_memory_per_block "
                   f"{limits.shared_memory_per_block}")
    regs = record["regs_per_thread"]
    if regs > limits.max_registers_per_thread:
        bad.append(f"{regs} registers/thread > {limits.max_registers_per_thread}")
    if regs < math.ceil(bm * bn / threads):
        bad.append(f"{regs} registers/thread cannot hold {math.ceil(bm * bn / threads)} "
                   "fp32 accumulators")
    blocks = record["blocks_per_unit"]
    per_warp = math.ceil(regs * limits.warp_size / limits.register_allocation_unit) \
        * limits.register_allocation_unit
    reserved = max(0, limits.shared_memory_per_unit - limits.shared_memory_per_block)
    if blocks < 1:
        bad.append("no block fits on a compute unit")
    checks = (
        (blocks <= limits.max_blocks_per_unit, f"{blocks} blocks > max_blocks_per_unit"),
        (blocks * warps <= limits.max_warps_per_unit, f"{blocks}x{warps} warps > per unit"),
        (blocks * threads <= limits.max_threads_per_unit, f"{blocks}x{threads} threads"),
        (blocks * (smem + reserved) <= limits.shared_memory_per_unit,
         f"{blocks} blocks x {smem + reserved} B shared memory > per unit"),
        (blocks * warps * per_warp <= limits.registers_per_unit,
         f"{blocks} blocks x {warps} warps x {per_warp} registers > registers_per_unit"),
    )
    bad.extend(message for ok, message in checks if not ok)
    # Vector loads: rows of whole vectors (as wide as the row pitch keeps aligned).
    for label, row_bits, pitch_bits in (("A", bk * a_bits, prob["K"] * a_bits),
                                        ("B", bn * b_bits, prob["N"] * b_bits)):
        vec = limits.vector_load_bytes
        while vec > 1 and pitch_bits % (8 * vec):
            vec //= 2
        if row_bits % (8 * vec):
            bad.append(f"{label} tile rows of {row_bits} bits are not whole {vec}-byte vectors")
    k_tiles = math.ceil(prob["K"] / bk)
    per_split = math.ceil(k_tiles / split)
    if not _pow2(split) or per_split * (split - 1) >= k_tiles:
        bad.append(f"split_k={split} leaves a split of K={prob['K']} empty")
    if not 1 <= stages <= 8:
        bad.append(f"stages={stages} out of range")
    return bad


def check_accel(record: Mapping[str, Any], hw: Hardware) -> list[str]:
    """Violations of an accelerator loop-nest record: array geometry, scratchpad capacity
    with double buffering, the stationary choice."""
    bad: list[str] = []
    dtype = record["dtype"]
    tile = record["tile"]
    a_bits, b_bits, _ = _operand_bits(record)
    if not hw.peak(dtype):
        bad.append(f"{hw.name} has no {dtype} peak")
    rows, cols = tile["array"]
    shape = hw.compute.matrix_shapes.get(dtype)  # type: ignore[call-overload]
    granule = 1
    if shape is not None:
        granule = shape[0]
        if (cols, rows) != (shape[1], shape[2]):
            bad.append(f"array {rows}x{cols} != {dtype} matrix shape {list(shape)}")
    elif hw.compute.array is not None and (rows, cols) != tuple(hw.compute.array):
        bad.append(f"array {rows}x{cols} != compute.array {list(hw.compute.array)}")
    tm, tn, tk = tile["Tm"], tile["Tn"], tile["Tk"]
    if tm % granule or tn % cols or tk % rows:
        bad.append(f"tile {tm}x{tn}x{tk} is not a multiple of the array ({granule}, {cols}, "
                   f"{rows})")
    managed = hw.managed_level
    if managed is None:
        main = next(reversed(hw.memory))
        managed = max(((n, lv) for n, lv in hw.memory.items() if n != main),
                      key=lambda item: item[1].size)
    capacity = managed[1].size
    need = (2 * (tm * tk * a_bits + tk * tn * b_bits) + 2 * tm * tn * 32 + 7) // 8
    if need > capacity:
        bad.append(f"double-buffered tiles need {need} B > {managed[0]} capacity {capacity}")
    if record["smem_bytes"] != need:
        bad.append(f"smem_bytes {record['smem_bytes']} != scratchpad footprint {need}")
    if tile["stationary"] not in ("output", "weight", "input"):
        bad.append(f"unknown stationary {tile['stationary']!r}")
    return bad
