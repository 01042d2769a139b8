"""GPU GEMM tiles: the hardware constraints, the cost model, and the CP-SAT model of both.

FlashRNN's ConstrINT poses tile sizes as an integer CSP (divisibility, shared memory,
registers, threads) and takes the first feasible answer. Here the same constraints, taken
from the hardware YAML, go to CP-SAT together with a cost model, and the answer is the
proven optimum of that model. `enumerate.py` evaluates `evaluate` (the very same formulas,
vectorized) on every candidate to check that claim.

Decision variables (one kernel = one tile config):
  BM, BN, BK   block tile (powers of two, >= 16 as Triton's tl.dot needs, multiples of the
               dtype's MMA shape m, n, k from `compute.matrix_shapes`; no larger than the
               problem rounded up to a power of two, since a larger tile only adds padding)
  grid         MMA issuers along M x N: warps, or warpgroups of 4 warps where the MMA is a
               warpgroup instruction (m >= 64: Hopper wgmma, Blackwell tcgen05)
  stages       software-pipeline depth (shared-memory buffers per operand), 1..6
  split_k      K split across blocks (partials reduced through an fp32 workspace), 1..16
  persistent   one resident block per slot looping over tiles; its epilogue overlaps the
               next tile's main loop, so it keeps a separate epilogue buffer

Constraints (all checked again, independently, by `constraints.py`):
  threads = warps * warp_size <= max_threads_per_block
  BM % (grid_m * mma_m) == 0, BN % (grid_n * mma_n) == 0, BK % mma_k == 0
  smem = stages*(BM*BK*a + BK*BN*b) [bytes]; epilogue staging BM*BN*c (fp32 with split-K)
         reuses it (max) or, persistent, adds to it; <= shared_memory_per_block
  regs/thread = accumulators BM*BN/threads + double-buffered MMA fragments + 24 (+ the
         stage's tiles when stages = 1: without asynchronous copies they pass through
         registers) <= max
  blocks/unit = min(max blocks, max warps / warps, max threads / threads,
                    smem per unit / (smem + reserved), registers per unit / (warps * regs
                    per warp rounded to the allocation unit)) >= 1
  vector loads: tile rows are whole vectors (vector_load_bytes, narrowed to what the
         problem's row pitch keeps aligned); a tile too small to give every thread a whole
         vector is loaded with narrower instructions, as compilers do
  split-K leaves no split empty

Cost model (integer SM clock cycles; rates are fixed point with denominator 16):
  per block iteration (one BK step of one block, the SM's whole throughput):
    mma    = BM*BN*BK / (MACs per cycle per SM * ETA_MMA), slowed by 4/warps when fewer
             warps than the SM's 4 sub-partitions are resident
    smem   = (grid_n*BM*BK*a + grid_m*BK*BN*b + BK*(BM*a + BN*b)) / shared-memory bytes per
             cycle: every issuer reads its A rows and B columns, and the stage is written
             (a block-wide MMA, Blackwell's tcgen05, reads each tile once: grid factors 1)
    c      = max(mma, smem) + SYNC
    iter   = max(c, ceil((LATENCY + c) / (resident blocks * stages)))  -- Little's law:
             each buffer is held for a load's latency plus its compute
  per SM: the busiest SM runs n_sm = ceil(blocks / units) blocks, `r` of them at a time:
    sm     = n_sm * k_iters * iter + (ceil(n_sm / r), or 1 if persistent) * (LATENCY + epi)
             where epi = the block's C tile (with split-K: its fp32 partial written and,
             amortized, one read back to reduce) / the SM's share of L2 bandwidth
  device-wide: L2 traffic (every block's A and B tile loads + C + split-K partials) and
  DRAM traffic (compulsory A, B, C + split-K partials; grouped rasterization, Triton's
  GROUP_SIZE_M, keeps re-reads in L2) at ETA_MEM of the datasheet bandwidths.
  time = max(sm, l2, dram) + (the two that do not bind) / LEAK cycles: overlap of compute
  and memory is never perfect; bound = compute if sm binds, else memory.
  objective = 16 * time + 2*log2(split_k) + persistent (ties: no split-K, not persistent).

Constants and why (calibration against published measurements: benchmarks/RESULTS.md):
  ETA_MMA = 0.90  attainable fraction of the datasheet tensor peak. The datasheet assumes
                  the boost clock at all times; under full tensor load the clock sags to
                  what the power limit sustains (NVIDIA's A100 HPL Rpeak uses 1305 MHz of
                  its 1410 MHz boost, 0.93), less a few percent of issue slots that
                  address arithmetic, barriers and fragment loads take from MMAs. Parts
                  whose power limit holds the clock far lower under matrix load (T4, L4,
                  MI300X) state `compute.sustained_clock`: the SM's per-cycle rates stay
                  architectural (datasheet / boost clock) and cycles become seconds at it.
  ETA_MEM = 0.90  attainable fraction of datasheet DRAM/L2 bandwidth (stream-like kernels
                  reach about 90% of HBM peak on A100/H100).
  LATENCY = 500   cycles a main-loop load takes: between an L2 hit (about 200-300 cycles)
                  and an HBM access (about 500-600) in microbenchmarks of Volta-Hopper
                  (Jia et al. 2018, arXiv:1804.06826; Abdelkhalik et al. 2022, "Demystifying
                  the Nvidia Ampere Architecture through Microbenchmarking").
  SUBCORES = 4    warp schedulers (and tensor cores) per SM since Volta; 4 SIMDs per CDNA CU.
  REG_BASE = 24   registers per thread beyond accumulators and fragments (pointers, loop
                  counters, predicates), as compiled GEMM main loops show.
  SYNC = 32       cycles per main-loop iteration the issuing warps spend on the barrier
                  (__syncthreads / mbarrier wait) and loop bookkeeping instead of MMAs: a
                  barrier round trip is a few tens of cycles in the microbenchmarks above.
  LEAK = 16       compute/memory overlap is imperfect (prologue fill, epilogue drain, bank
                  and DRAM-page conflicts): 1/16 of the non-binding resources' time shows.
  reserved shared memory per block = shared_memory_per_unit - shared_memory_per_block
                  (1 KiB on sm_80+, whose YAMLs list 163 KiB of 164 KiB; 0 where equal).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from mapper.errors import InfeasibleError, UserError
from mapper.hwmodels.schema import Hardware
from mapper.passes.tiling.cpsat import Builder, SolveLimits, SolveOutcome
from mapper.passes.tiling.problems import SIMT_DTYPES, GemmProblem

SCALE = 16                # fixed-point denominator of per-cycle rates
ETA_MMA = 0.90
ETA_MEM = 0.90
LATENCY = 500
SUBCORES = 4
REG_BASE = 24
SYNC = 32                 # cycles per main-loop iteration for the barrier and loop control
LEAK = 16                 # 1/LEAK of the resources that do not bind still shows in the time
ACC_BITS = 32             # fp32 / int32 accumulators
MIN_BLOCK = 16            # Triton's tl.dot needs every block dimension >= 16
MAX_BLOCK = 256
MAX_STAGES = 6
MAX_WARPS = 16
SPLITS = (1, 2, 4, 8, 16)
SIMT_SHAPE = (16, 16, 1)  # CUDA-core GEMM: a warp owns at least a 16 x 16 output patch
OBJECTIVE_WEIGHT = 16


@dataclass(frozen=True)
class GpuOptions:
    """Which kernel features the search may use."""

    max_split_k: int = 16
    persistent: bool = True


@dataclass(frozen=True)
class GpuTarget:
    """The integer facts about one GPU and dtype the model needs (rates x SCALE per cycle)."""

    name: str
    dtype: str
    clock_hz: float
    units: int
    warp_size: int
    issue_warps: int          # warps per MMA issuer: 1, or 4 for warpgroup MMA
    block_wide_mma: bool      # one MMA stream per block reads each operand tile once
    mma: tuple[int, int, int]
    simt: bool
    mac_q: int                # MACs per cycle per SM x SCALE, after ETA_MMA
    smem_bpc: int             # shared-memory bytes per cycle per SM
    l2_q: int                 # L2 bytes per cycle (device) x SCALE, after ETA_MEM
    dram_q: int               # DRAM bytes per cycle (device) x SCALE, after ETA_MEM
    store_q: int              # one SM's share of L2 bandwidth x SCALE
    latency: int
    max_threads_block: int
    max_threads_unit: int
    max_blocks_unit: int
    max_warps_unit: int
    regs_unit: int
    max_regs_thread: int
    reg_alloc_unit: int
    smem_block: int
    smem_unit: int
    smem_reserved: int
    vec_bytes: int


@dataclass(frozen=True)
class GpuTile:
    """One GPU kernel configuration (the decision)."""

    bm: int
    bn: int
    bk: int
    grid_m: int
    grid_n: int
    warps: int
    stages: int
    split_k: int
    persistent: bool

    def to_dict(self) -> dict[str, Any]:
        """The contract's `tile` object plus the warp grid and persistence."""
        return {"BM": self.bm, "BN": self.bn, "BK": self.bk, "warps": self.warps,
                "stages": self.stages, "split_k": self.split_k,
                "warp_grid": [self.grid_m, self.grid_n], "persistent": self.persistent}


@dataclass(frozen=True)
class GpuSpace:
    """The candidate values of every decision variable for one problem."""

    bm: tuple[int, ...]
    bn: tuple[int, ...]
    bk: tuple[int, ...]
    grids: tuple[tuple[int, int], ...]
    stages: tuple[int, ...]
    split_k: tuple[int, ...]
    persistent: tuple[int, ...]
    vec_a: int
    vec_b: int

    @property
    def size(self) -> int:
        """Number of candidate configurations (before constraints)."""
        return (len(self.bm) * len(self.bn) * len(self.bk) * len(self.grids)
                * len(self.stages) * len(self.split_k) * len(self.persistent))


def _pick_level(hardware: Hardware, names: tuple[str, ...], scope: str, size: int | None
                ) -> Any:
    levels = [(n, lv) for n, lv in hardware.memory.items() if lv.scope == scope]
    for name, level in levels:
        if name in names:
            return level
    for _, level in levels:
        if size is not None and level.size == size:
            return level
    return None


def gpu_target(hardware: Hardware, dtype: str) -> GpuTarget:
    """The GPU facts for `dtype`; UserError if the hardware model is not a usable GPU."""
    limits = hardware.kernel_limits
    if hardware.kind != "gpu" or limits is None:
        raise UserError(f"{hardware.name} is not a GPU with kernel_limits; the GPU tile model "
                        "needs them (kind: gpu and a kernel_limits block)")
    peak = hardware.peak(dtype)
    shape = hardware.compute.matrix_shapes.get(dtype)  # type: ignore[call-overload]
    if not peak or (shape is None and dtype not in SIMT_DTYPES):
        raise InfeasibleError(f"{hardware.name} has no {dtype} GEMM support")
    simt = shape is None
    mma = SIMT_SHAPE if simt else tuple(int(v) for v in shape)
    if any(v & (v - 1) for v in mma):
        raise UserError(f"{hardware.name}: the {dtype} matrix shape {list(mma)} is not made of "
                        "powers of two, which the GPU tile model (power-of-two tiles) needs")
    compute = hardware.compute
    # Per-cycle rates of the SM are architectural (datasheet figure / boost clock); cycles
    # become seconds at the clock held under load, while memory keeps its bytes per second.
    boost = compute.clock_hz
    clock = compute.sustained_clock_hz or boost
    units = compute.units
    smem = _pick_level(hardware, ("shared", "lds", "smem"), "unit", limits.shared_memory_per_unit)
    # Without a shared-memory level in the YAML, assume the common 32 banks x 4 bytes.
    smem_bpc = max(1, round(smem.bandwidth / boost)) if smem is not None else 128
    main_name, main = hardware.main_memory
    caches = [lv for n, lv in hardware.memory.items() if lv.scope == "device" and n != main_name]
    l2_bw = caches[0].bandwidth if caches else main.bandwidth
    l2_q = max(1, round(l2_bw * ETA_MEM / clock * SCALE))
    return GpuTarget(
        name=hardware.name, dtype=dtype, clock_hz=clock, units=units,
        warp_size=limits.warp_size, issue_warps=4 if mma[0] >= 64 else 1,
        block_wide_mma=limits.block_wide_mma and not simt,
        mma=(mma[0], mma[1], mma[2]), simt=simt,
        mac_q=max(1, round(peak * ETA_MMA / (2 * units * boost) * SCALE)),
        smem_bpc=smem_bpc, l2_q=l2_q,
        dram_q=max(1, round(main.bandwidth * ETA_MEM / clock * SCALE)),
        store_q=max(1, l2_q // units), latency=LATENCY,
        max_threads_block=limits.max_threads_per_block,
        max_threads_unit=limits.max_threads_per_unit,
        max_blocks_unit=limits.max_blocks_per_unit, max_warps_unit=limits.max_warps_per_unit,
        regs_unit=limits.registers_per_unit, max_regs_thread=limits.max_registers_per_thread,
        reg_alloc_unit=limits.register_allocation_unit,
        smem_block=limits.shared_memory_per_block, smem_unit=limits.shared_memory_per_unit,
        smem_reserved=max(0, limits.shared_memory_per_unit - limits.shared_memory_per_block),
        vec_bytes=limits.vector_load_bytes)


def _pow2s(lo: int, hi: int) -> tuple[int, ...]:
    values, v = [], 1
    while v <= hi:
        if v >= lo:
            values.append(v)
        v *= 2
    return tuple(values)


def _next_pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


def _aligned_vector(pitch_bits: int, vec: int) -> int:
    """Widest power-of-two load (<= vec bytes) that a row pitch of pitch_bits keeps aligned."""
    width = vec
    while width > 1 and pitch_bits % (8 * width):
        width //= 2
    return width


def gpu_space(problem: GemmProblem, target: GpuTarget, options: GpuOptions) -> GpuSpace:
    """Candidate values per variable; tiles beyond the padded problem are left out (never
    better: they only add padding, shared memory and registers)."""
    mm, mn, mk = target.mma

    def sizes(extent: int, granule: int) -> tuple[int, ...]:
        lo = max(MIN_BLOCK, granule)
        return _pow2s(lo, max(lo, min(MAX_BLOCK, _next_pow2(extent))))

    max_warps = min(MAX_WARPS, target.max_threads_block // target.warp_size)
    issuers = max_warps // target.issue_warps
    grids = tuple((gm, gn) for gm in _pow2s(1, issuers) for gn in _pow2s(1, issuers)
                  if gm * gn <= issuers)
    split_max = max(1, min(options.max_split_k, SPLITS[-1]))
    return GpuSpace(
        bm=sizes(problem.m, mm), bn=sizes(problem.n, mn), bk=sizes(problem.k, mk),
        grids=grids, stages=tuple(range(1, MAX_STAGES + 1)),
        split_k=tuple(s for s in SPLITS if s <= split_max),
        persistent=(0, 1) if options.persistent else (0,),
        vec_a=_aligned_vector(problem.k * problem.a_bits, target.vec_bytes),
        vec_b=_aligned_vector(problem.n * problem.b_bits, target.vec_bytes))


def _cdiv(a: Any, b: Any) -> Any:
    return -(-a // b)


def evaluate(problem: GemmProblem, target: GpuTarget, space: GpuSpace,
             cols: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The cost model on arrays of configurations (keys bm bn bk gm gn st sk ps): every
    intermediate, the feasibility mask `ok`, the modeled cycles `total` and the integer
    `objective` the search minimizes."""
    p, t = problem, target
    bm, bn, bk = (np.asarray(cols[k], dtype=np.int64) for k in ("bm", "bn", "bk"))
    gm, gn, st = (np.asarray(cols[k], dtype=np.int64) for k in ("gm", "gn", "st"))
    sk, ps = (np.asarray(cols[k], dtype=np.int64) for k in ("sk", "ps"))
    mm, mn, mk = t.mma
    warps = t.issue_warps * gm * gn
    threads = warps * t.warp_size
    tm, tn, kt = _cdiv(p.m, bm), _cdiv(p.n, bn), _cdiv(p.k, bk)
    ki = _cdiv(kt, sk)
    blocks = p.batch * tm * tn * sk
    split = sk > 1
    c_stage_bits = np.where(split, ACC_BITS, p.c_bits)
    # Split-K: a block writes its fp32 partial tile and (amortized) reads one back to reduce.
    c_move_bits = np.where(split, 2 * ACC_BITS, p.c_bits)
    stage_bytes = bk * (bm * p.a_bits + bn * p.b_bits) // 8
    smem_main = st * stage_bytes
    smem_epi = bm * bn * c_stage_bits // 8
    smem = np.where(ps == 1, smem_main + smem_epi, np.maximum(smem_main, smem_epi))
    acc = _cdiv(bm * bn, threads)
    if t.issue_warps == 1:
        frag_a = _cdiv((bm // gm) * mk * p.a_bits, 32 * t.warp_size)
        frag_b = _cdiv((bn // gn) * mk * p.b_bits, 32 * t.warp_size)
        regs = acc + 2 * (frag_a + frag_b) + REG_BASE
    else:  # warpgroup MMA reads both operands from shared memory
        regs = acc + REG_BASE
    # One stage: no asynchronous copies, the tiles pass through registers on their way.
    regs = regs + np.where(st == 1, _cdiv(stage_bytes, 4 * threads), 0)
    regs_warp = _cdiv(regs * t.warp_size, t.reg_alloc_unit) * t.reg_alloc_unit
    bpu = np.minimum.reduce([
        np.full_like(bm, t.max_blocks_unit), t.max_warps_unit // warps,
        t.max_threads_unit // threads, t.smem_unit // (smem + t.smem_reserved),
        t.regs_unit // (warps * regs_warp)])
    checks = {
        "threads per block": threads <= t.max_threads_block,
        "MMA shape divisibility": (bm % (gm * mm) == 0) & (bn % (gn * mn) == 0) & (bk % mk == 0),
        "shared memory per block": smem <= t.smem_block,
        "registers per thread": regs <= t.max_regs_thread,
        "one block per unit (occupancy)": bpu >= 1,
        "vector-aligned tile rows": ((bk * p.a_bits // 8) % space.vec_a == 0)
        & ((bn * p.b_bits // 8) % space.vec_b == 0),
        "no empty split-K slice": ki * (sk - 1) < kt,
    }
    ok = np.logical_and.reduce(list(checks.values()))
    n_sm = _cdiv(blocks, t.units)
    resident = np.maximum(1, np.minimum(bpu, n_sm))
    mma = _cdiv(bm * bn * bk * SCALE, t.mac_q)
    readers_a, readers_b = (1, 1) if t.block_wide_mma else (gn, gm)
    smem_cyc = _cdiv((readers_a * bm * bk * p.a_bits + readers_b * bk * bn * p.b_bits) // 8
                     + stage_bytes, t.smem_bpc)
    active = np.minimum(SUBCORES, resident * warps)
    mma_eff = _cdiv(mma * SUBCORES, active)
    c = np.maximum(mma_eff, smem_cyc) + SYNC
    latency_bound = _cdiv(t.latency + c, resident * st)
    iteration = np.maximum(c, latency_bound)
    main = n_sm * ki * iteration
    epi = _cdiv(bm * bn * c_move_bits // 8 * SCALE, t.store_q)
    over = np.where(ps == 1, t.latency + epi, _cdiv(n_sm, resident) * (t.latency + epi))
    sm = main + over
    partial = np.where(split, 2 * sk * p.batch * p.m * p.n * (ACC_BITS // 8), 0)
    l2 = blocks * ki * stage_bytes + p.c_bytes + partial
    dram = p.a_bytes + p.b_bytes + p.c_bytes + partial
    l2_cyc = _cdiv(l2 * SCALE, t.l2_q)
    dram_cyc = _cdiv(dram * SCALE, t.dram_q)
    binding = np.maximum(sm, np.maximum(l2_cyc, dram_cyc))
    total = binding + _cdiv(sm + l2_cyc + dram_cyc - binding, LEAK)
    log_sk = np.log2(sk).astype(np.int64)
    objective = total * OBJECTIVE_WEIGHT + 2 * log_sk + ps
    return {"ok": ok, "checks": checks, "warps": warps, "threads": threads, "blocks": blocks,
            "ki": ki,
            "smem_main": smem_main, "smem_epi": smem_epi, "smem": smem, "regs": regs,
            "bpu": bpu, "n_sm": n_sm, "resident": resident, "mma": mma, "smem_cyc": smem_cyc,
            "iteration": iteration, "main": main, "over": over, "sm": sm, "l2": l2,
            "dram": dram, "l2_cyc": l2_cyc, "dram_cyc": dram_cyc, "total": total,
            "objective": objective}


def best_index(result: Mapping[str, np.ndarray], candidates: np.ndarray) -> int:
    """The index of the least objective among `candidates` (the first on ties)."""
    return int(candidates[np.argmin(result["objective"][candidates])])


def tile_columns(tiles: list[GpuTile]) -> dict[str, np.ndarray]:
    """Configurations as the column arrays `evaluate` takes."""
    return {"bm": np.array([t.bm for t in tiles]), "bn": np.array([t.bn for t in tiles]),
            "bk": np.array([t.bk for t in tiles]), "gm": np.array([t.grid_m for t in tiles]),
            "gn": np.array([t.grid_n for t in tiles]), "st": np.array([t.stages for t in tiles]),
            "sk": np.array([t.split_k for t in tiles]),
            "ps": np.array([int(t.persistent) for t in tiles])}


def evaluate_tile(problem: GemmProblem, target: GpuTarget, space: GpuSpace, tile: GpuTile
                  ) -> dict[str, int]:
    """The cost model for one tile, as plain ints (ok as 0/1)."""
    result = evaluate(problem, target, space, tile_columns([tile]))
    return {key: int(value[0]) for key, value in result.items() if key != "checks"}


def explain_infeasible(problem: GemmProblem, target: GpuTarget, space: GpuSpace) -> str:
    """Why no configuration fits: constraints no candidate meets, else the conflicting set."""
    _, result = enumerate_space(problem, target, space)
    return _explain(result["checks"])


def _explain(checks: Mapping[str, np.ndarray]) -> str:
    never = [name for name, mask in checks.items() if not mask.any()]
    if never:
        return "no candidate meets: " + ", ".join(never)
    return "each constraint is met by some candidate but none meets all of: " + \
        ", ".join(checks)


def make_tile(target: GpuTarget, bm: int, bn: int, bk: int, gm: int, gn: int, st: int,
              sk: int, ps: int) -> GpuTile:
    """A GpuTile from raw values (warps = issuer warps x grid)."""
    return GpuTile(bm=int(bm), bn=int(bn), bk=int(bk), grid_m=int(gm), grid_n=int(gn),
                   warps=int(target.issue_warps * gm * gn), stages=int(st), split_k=int(sk),
                   persistent=bool(ps))


# Triton tutorial 03's autotune list (BM, BN, BK, GROUP_SIZE_M, num_warps, num_stages) for
# CUDA, the seed of the heuristic (as a kernel author's first guess).
TRITON_TUTORIAL_CONFIGS: tuple[tuple[int, int, int, int, int, int], ...] = (
    (128, 256, 64, 8, 8, 3), (64, 256, 32, 8, 4, 4), (128, 128, 32, 8, 4, 4),
    (128, 64, 32, 8, 4, 4), (64, 128, 32, 8, 4, 4), (128, 32, 32, 8, 4, 4),
    (64, 32, 32, 8, 2, 5), (32, 64, 32, 8, 2, 5))


def _grid_for(target: GpuTarget, bm: int, bn: int, warps: int) -> tuple[int, int] | None:
    issuers = warps // target.issue_warps
    if issuers < 1 or issuers * target.issue_warps != warps:
        return None
    best = None
    for gm in _pow2s(1, issuers):
        gn = issuers // gm
        if gm * gn != issuers or bm % (gm * target.mma[0]) or bn % (gn * target.mma[1]):
            continue
        # The squarest warp tile reads the least shared memory per MMA.
        score = abs(math.log2((bm / gm) / (bn / gn)))
        if best is None or score < best[0]:
            best = (score, gm, gn)
    return None if best is None else (best[1], best[2])


def heuristic(problem: GemmProblem, target: GpuTarget, space: GpuSpace) -> GpuTile | None:
    """A kernel author's first guess: the best of Triton's tutorial configs (clamped to the
    space) under the model, else the first feasible config in a fixed order (ConstrINT)."""
    tiles: list[GpuTile] = []

    def clamp(value: int, options: tuple[int, ...]) -> int:
        fitting = [v for v in options if v <= value]
        return max(fitting) if fitting else min(options)

    for bm, bn, bk, _, warps, stages in TRITON_TUTORIAL_CONFIGS:
        bm, bn, bk = clamp(bm, space.bm), clamp(bn, space.bn), clamp(bk, space.bk)
        for w in (warps, 4, 8):
            grid = _grid_for(target, bm, bn, w)
            if grid is not None and grid in space.grids:
                tiles.append(make_tile(target, bm, bn, bk, *grid, stages, 1, 0))
                break
    if tiles:
        result = evaluate(problem, target, space, tile_columns(tiles))
        feasible = np.flatnonzero(result["ok"])
        if feasible.size:
            return tiles[best_index(result, feasible)]
    return first_feasible(problem, target, space)


def first_feasible(problem: GemmProblem, target: GpuTarget, space: GpuSpace) -> GpuTile | None:
    """ConstrINT's answer: the first config satisfying every constraint, largest tiles first."""
    for bm, bn, bk in itertools.product(space.bm[::-1], space.bn[::-1], space.bk[::-1]):
        candidates = [make_tile(target, bm, bn, bk, gm, gn, st, 1, 0)
                      for gm, gn in space.grids for st in space.stages[::-1]]
        result = evaluate(problem, target, space, tile_columns(candidates))
        feasible = np.flatnonzero(result["ok"])
        if feasible.size:
            return candidates[int(feasible[0])]
    return None


def _log2(values: tuple[int, ...]) -> list[int]:
    return [int(v).bit_length() - 1 for v in values]


def solve_cpsat(problem: GemmProblem, target: GpuTarget, space: GpuSpace,
                hint: GpuTile | None, limits: SolveLimits) -> tuple[GpuTile | None, SolveOutcome]:
    """The optimum of `evaluate` over `space`, posed to CP-SAT as integer constraints."""
    p, t = problem, target
    b = Builder()
    mdl = b.model
    mm, mn, mk = t.mma
    lbm_v, lbn_v, lbk_v = _log2(space.bm), _log2(space.bn), _log2(space.bk)
    lsk_v = _log2(space.split_k)
    grid_m_v = sorted({g[0] for g in space.grids})
    grid_n_v = sorted({g[1] for g in space.grids})
    lbm = b.choice("lbm", lbm_v)
    lbn = b.choice("lbn", lbn_v)
    lbk = b.choice("lbk", lbk_v)
    lgm = b.choice("lgm", _log2(tuple(grid_m_v)))
    lgn = b.choice("lgn", _log2(tuple(grid_n_v)))
    st = b.choice("st", space.stages)
    lsk = b.choice("lsk", lsk_v)
    ps = b.choice("ps", space.persistent)
    decisions = {"lbm": lbm, "lbn": lbn, "lbk": lbk, "lgm": lgm, "lgn": lgn, "st": st,
                 "lsk": lsk, "ps": ps}
    # Only the warp grids of the space (their product is bounded by the thread limit).
    mdl.add_allowed_assignments(
        [lgm, lgn], [(g[0].bit_length() - 1, g[1].bit_length() - 1) for g in space.grids])

    def exp_table(expr: Any, lo: int, hi: int, fn: Any, name: str) -> Any:
        """Variable = fn(2 ** e) for the exponent expression e in [lo, hi]."""
        e = b.var(lo, hi, f"{name}_e")
        mdl.add(e == expr)
        return b.table(e, lo, [fn(2 ** i) for i in range(lo, hi + 1)], name)

    bm_lo, bm_hi = lbm_v[0], lbm_v[-1]
    bn_lo, bn_hi = lbn_v[0], lbn_v[-1]
    bk_lo, bk_hi = lbk_v[0], lbk_v[-1]
    g_lo, g_hi = 0, max(_log2(tuple(grid_m_v)) + _log2(tuple(grid_n_v)))
    # Divisibility by the MMA shape per issuer: BM >= grid_m * mma_m (all powers of two).
    mdl.add(lbm >= lgm + int(math.log2(mm)))
    mdl.add(lbn >= lgn + int(math.log2(mn)))
    tm = b.table(lbm, bm_lo, [_cdiv(p.m, 2 ** i) for i in range(bm_lo, bm_hi + 1)], "tm")
    tn = b.table(lbn, bn_lo, [_cdiv(p.n, 2 ** i) for i in range(bn_lo, bn_hi + 1)], "tn")
    kt_values = [_cdiv(p.k, 2 ** i) for i in range(bk_lo, bk_hi + 1)]
    # k iterations per split and the no-empty-split rule, tabled over (BK, split_k).
    pair = b.var(0, (bk_hi - bk_lo + 1) * len(lsk_v) - 1, "bk_sk")
    mdl.add(pair == (lbk - bk_lo) * len(lsk_v) + lsk - lsk_v[0])
    ki_values, valid = [], []
    for kt_value in kt_values:
        for e in lsk_v:
            ki_value = _cdiv(kt_value, 2 ** e)
            ki_values.append(ki_value)
            valid.append(int(ki_value * (2 ** e - 1) < kt_value))
    ki = b.table(pair, 0, ki_values, "ki")
    mdl.add(b.table(pair, 0, valid, "split_ok") == 1)
    sk = b.table(lsk, lsk_v[0], [2 ** e for e in range(lsk_v[0], lsk_v[-1] + 1)], "sk")
    split = b.bool("split")
    mdl.add(lsk >= 1).only_enforce_if(split)
    mdl.add(lsk == 0).only_enforce_if(~split)
    tmn = b.product([tm, tn], _cdiv(p.m, 2 ** bm_lo) * _cdiv(p.n, 2 ** bn_lo), "tmn")
    blocks_core = b.product([tmn, sk], _cdiv(p.m, 2 ** bm_lo) * _cdiv(p.n, 2 ** bn_lo)
                            * space.split_k[-1], "tmnsk")
    blocks = blocks_core * p.batch
    lg = b.var(g_lo, g_hi, "lg")
    mdl.add(lg == lgm + lgn)
    warps = b.table(lg, g_lo, [t.issue_warps * 2 ** i for i in range(g_lo, g_hi + 1)], "warps")
    threads = warps * t.warp_size
    mdl.add(threads <= t.max_threads_block)
    # Shared memory.
    a_tile = exp_table(lbm + lbk, bm_lo + bk_lo, bm_hi + bk_hi, lambda v: v * p.a_bits // 8,
                       "a_tile")
    b_tile = exp_table(lbn + lbk, bn_lo + bk_lo, bn_hi + bk_hi, lambda v: v * p.b_bits // 8,
                       "b_tile")
    stage_hi = (2 ** (bm_hi + bk_hi) * p.a_bits + 2 ** (bn_hi + bk_hi) * p.b_bits) // 8
    stage = b.var(0, stage_hi, "stage")
    mdl.add(stage == a_tile + b_tile)
    smem_main = b.product([st, stage], stage_hi * space.stages[-1], "smem_main")
    e_mn = b.var(bm_lo + bn_lo, bm_hi + bn_hi, "e_mn")
    mdl.add(e_mn == lbm + lbn)
    epi_pair = b.var(0, 2 * (bm_hi + bn_hi - bm_lo - bn_lo + 1) - 1, "epi_pair")
    mdl.add(epi_pair == 2 * (e_mn - bm_lo - bn_lo) + split)
    epi_bytes = [2 ** e * bits // 8 for e in range(bm_lo + bn_lo, bm_hi + bn_hi + 1)
                 for bits in (p.c_bits, ACC_BITS)]
    smem_epi = b.table(epi_pair, 0, epi_bytes, "smem_epi")
    smem_hi = stage_hi * space.stages[-1] + max(epi_bytes)
    smem_max = b.maximum([smem_main, smem_epi], 0, smem_hi, "smem_max")
    smem = b.var(1, smem_hi, "smem")
    is_ps = ps == 1
    if len(space.persistent) == 1:
        mdl.add(smem == smem_max)
    else:
        pbool = b.bool("persistent")
        mdl.add(ps == 1).only_enforce_if(pbool)
        mdl.add(ps == 0).only_enforce_if(~pbool)
        mdl.add(smem == smem_main + smem_epi).only_enforce_if(pbool)
        mdl.add(smem == smem_max).only_enforce_if(~pbool)
        is_ps = pbool
    mdl.add(smem <= t.smem_block)
    # Registers: accumulators + fragments + base.
    acc_lo = bm_lo + bn_lo - g_hi - int(math.log2(t.issue_warps * t.warp_size))
    acc_hi = bm_hi + bn_hi - g_lo - int(math.log2(t.issue_warps * t.warp_size))
    e_acc = b.var(acc_lo, acc_hi, "e_acc")
    mdl.add(e_acc == lbm + lbn - lg - int(math.log2(t.issue_warps * t.warp_size)))
    acc = b.table(e_acc, acc_lo, [1 if e < 0 else 2 ** e for e in range(acc_lo, acc_hi + 1)],
                  "acc")
    if t.issue_warps == 1:
        gm_hi_e = _log2(tuple(grid_m_v))[-1]
        gn_hi_e = _log2(tuple(grid_n_v))[-1]
        frag_a = exp_table(lbm - lgm, bm_lo - gm_hi_e, bm_hi, lambda v: _cdiv(
            v * mk * p.a_bits, 32 * t.warp_size), "frag_a")
        frag_b = exp_table(lbn - lgn, bn_lo - gn_hi_e, bn_hi, lambda v: _cdiv(
            v * mk * p.b_bits, 32 * t.warp_size), "frag_b")
        regs_expr = acc + 2 * (frag_a + frag_b) + REG_BASE
    else:
        regs_expr = acc + REG_BASE
    staged = b.ceildiv(stage, threads * 4, _cdiv(stage_hi, 4 * t.warp_size), "staged")
    one_stage = b.bool("one_stage")
    mdl.add(st == 1).only_enforce_if(one_stage)
    mdl.add(st >= 2).only_enforce_if(~one_stage)
    regs = b.var(0, 4096 + _cdiv(stage_hi, 4 * t.warp_size), "regs")
    mdl.add(regs == regs_expr + staged).only_enforce_if(one_stage)
    mdl.add(regs == regs_expr).only_enforce_if(~one_stage)
    mdl.add(regs <= t.max_regs_thread)
    alloc_q = b.ceildiv(regs * t.warp_size, t.reg_alloc_unit, 4096 * t.warp_size, "alloc_q")
    warp_alloc = b.product([warps, alloc_q], MAX_WARPS * 4096 * t.warp_size, "warp_alloc",
                           lo=1)
    bpu_regs = b.floordiv(t.regs_unit // t.reg_alloc_unit, warp_alloc, t.regs_unit, "bpu_regs")
    bpu_warps = b.table(lg, g_lo, [t.max_warps_unit // (t.issue_warps * 2 ** i)
                                   for i in range(g_lo, g_hi + 1)], "bpu_warps")
    bpu_threads = b.table(lg, g_lo, [t.max_threads_unit // (t.issue_warps * 2 ** i
                                                            * t.warp_size)
                                     for i in range(g_lo, g_hi + 1)], "bpu_threads")
    bpu_smem = b.floordiv(t.smem_unit, smem + t.smem_reserved, t.smem_unit, "bpu_smem")
    bpu = b.minimum([t.max_blocks_unit, bpu_warps, bpu_threads, bpu_smem, bpu_regs], 1,
                    t.max_blocks_unit, "bpu")
    # Vector loads: tile rows are whole vectors.
    for var, lo, hi, bits, vec in ((lbk, bk_lo, bk_hi, p.a_bits, space.vec_a),
                                   (lbn, bn_lo, bn_hi, p.b_bits, space.vec_b)):
        mdl.add_allowed_assignments([var], [(e,) for e in range(lo, hi + 1)
                                            if (2 ** e * bits // 8) % vec == 0] or [(-1,)])
    mdl.add(lbk >= int(math.log2(mk)))
    # Time.
    blocks_hi = _cdiv(p.m, 2 ** bm_lo) * _cdiv(p.n, 2 ** bn_lo) * space.split_k[-1] * p.batch
    n_sm_hi = _cdiv(blocks_hi, t.units)
    n_sm = b.ceildiv(blocks, t.units, n_sm_hi, "n_sm")
    resident = b.minimum([bpu, n_sm], 1, t.max_blocks_unit, "resident")
    mma = exp_table(lbm + lbn + lbk, bm_lo + bn_lo + bk_lo, bm_hi + bn_hi + bk_hi,
                    lambda v: _cdiv(v * SCALE, t.mac_q), "mma")
    mma_hi = _cdiv(2 ** (bm_hi + bn_hi + bk_hi) * SCALE, t.mac_q)
    # Operand tiles read from shared memory per k-step: once per issuer along the other
    # dimension, or once per block for a block-wide MMA.
    read_a = 0 if t.block_wide_mma else lgn
    read_b = 0 if t.block_wide_mma else lgm
    rd_a = exp_table(read_a + lbm + lbk, bm_lo + bk_lo, bm_hi + bk_hi + max(_log2(
        tuple(grid_n_v))), lambda v: v * p.a_bits // 8, "rd_a")
    rd_b = exp_table(read_b + lbn + lbk, bn_lo + bk_lo, bn_hi + bk_hi + max(_log2(
        tuple(grid_m_v))), lambda v: v * p.b_bits // 8, "rd_b")
    rd_hi = (2 ** (bm_hi + bk_hi + g_hi) * p.a_bits + 2 ** (bn_hi + bk_hi + g_hi) * p.b_bits) // 8
    rd_hi += stage_hi
    smem_cyc = b.ceildiv(rd_a + rd_b + stage, t.smem_bpc, _cdiv(rd_hi, t.smem_bpc), "smem_cyc")
    rw = b.product([resident, warps], t.max_blocks_unit * MAX_WARPS, "rw")
    active = b.minimum([SUBCORES, rw], 1, SUBCORES, "active")
    mma_eff = b.ceildiv(mma * SUBCORES, active, mma_hi * SUBCORES, "mma_eff")
    c_hi = max(mma_hi * SUBCORES, _cdiv(rd_hi, t.smem_bpc))
    c_core = b.maximum([mma_eff, smem_cyc], 0, c_hi, "c_core")
    c = c_core + SYNC
    c_hi += SYNC
    queue = b.product([resident, st], t.max_blocks_unit * space.stages[-1], "queue", lo=1)
    lat = b.ceildiv(c + t.latency, queue, c_hi + t.latency, "lat")
    iteration = b.maximum([c, lat], 0, c_hi + t.latency, "iter")
    ki_hi = max(ki_values)
    nk = b.product([n_sm, ki], n_sm_hi * ki_hi, "nk")
    main_hi = n_sm_hi * ki_hi * (c_hi + t.latency)
    main = b.product([nk, iteration], main_hi, "main")
    move_bytes = [2 ** e * bits // 8 for e in range(bm_lo + bn_lo, bm_hi + bn_hi + 1)
                  for bits in (p.c_bits, 2 * ACC_BITS)]
    epi_values = [_cdiv(v * SCALE, t.store_q) for v in move_bytes]
    epi = b.table(epi_pair, 0, epi_values, "epi")
    epi_hi = max(epi_values)
    rounds = b.ceildiv(n_sm, resident, n_sm_hi, "rounds")
    over_np = b.product([rounds, epi + t.latency], n_sm_hi * (epi_hi + t.latency), "over_np")
    over = b.var(0, n_sm_hi * (epi_hi + t.latency), "over")
    if len(space.persistent) == 1:
        mdl.add(over == over_np)
    else:
        mdl.add(over == epi + t.latency).only_enforce_if(is_ps)
        mdl.add(over == over_np).only_enforce_if(~is_ps)
    sm = b.var(0, main_hi + n_sm_hi * (epi_hi + t.latency), "sm")
    mdl.add(sm == main + over)
    # Traffic: tile loads through L2; compulsory + split-K partials from DRAM.
    partial_bytes = [(2 * 2 ** e * p.batch * p.m * p.n * (ACC_BITS // 8) if e > 0 else 0)
                     for e in range(lsk_v[0], lsk_v[-1] + 1)]
    partial = b.table(lsk, lsk_v[0], partial_bytes, "partial")
    sk_ki_hi = max(kt_values) + space.split_k[-1]
    sk_ki = b.product([sk, ki], sk_ki_hi, "sk_ki")
    tiles_k = b.product([tmn, sk_ki], _cdiv(p.m, 2 ** bm_lo) * _cdiv(p.n, 2 ** bn_lo)
                        * sk_ki_hi, "tiles_k")
    loads_hi = p.batch * ((p.m + 2 ** bm_hi) * (p.n + 2 ** bn_hi)
                          * (p.k + space.split_k[-1] * 2 ** bk_hi)
                          * (p.a_bits + p.b_bits)) // (8 * MIN_BLOCK)
    loads = b.product([tiles_k, stage], loads_hi, "loads")
    l2_hi = p.batch * loads_hi + p.c_bytes + max(partial_bytes)
    l2_bytes = b.var(0, l2_hi, "l2_bytes")
    mdl.add(l2_bytes == p.batch * loads + p.c_bytes + partial)
    l2_cyc = b.ceildiv(l2_bytes * SCALE, t.l2_q, _cdiv(l2_hi * SCALE, t.l2_q), "l2_cyc")
    dram_values = [_cdiv((p.a_bytes + p.b_bytes + p.c_bytes + v) * SCALE, t.dram_q)
                   for v in partial_bytes]
    dram_cyc = b.table(lsk, lsk_v[0], dram_values, "dram_cyc")
    total_hi = max(main_hi + n_sm_hi * (epi_hi + t.latency), _cdiv(l2_hi * SCALE, t.l2_q),
                   max(dram_values))
    binding = b.maximum([sm, l2_cyc, dram_cyc], 0, total_hi, "binding")
    leak = b.ceildiv(sm + l2_cyc + dram_cyc - binding, LEAK, _cdiv(2 * total_hi, LEAK), "leak")
    total = binding + leak
    objective = total * OBJECTIVE_WEIGHT + 2 * lsk + ps
    hint_values = None
    if hint is not None:
        hint_values = {"lbm": _log2((hint.bm,))[0], "lbn": _log2((hint.bn,))[0],
                       "lbk": _log2((hint.bk,))[0], "lgm": _log2((hint.grid_m,))[0],
                       "lgn": _log2((hint.grid_n,))[0], "st": hint.stages,
                       "lsk": _log2((hint.split_k,))[0], "ps": int(hint.persistent)}
    outcome = b.solve([objective], decisions, hint_values, limits)
    if outcome.values is None:
        return None, outcome
    v = outcome.values
    tile = make_tile(t, 2 ** v["lbm"], 2 ** v["lbn"], 2 ** v["lbk"], 2 ** v["lgm"],
                     2 ** v["lgn"], v["st"], 2 ** v["lsk"], v["ps"])
    return tile, outcome


def enumerate_space(problem: GemmProblem, target: GpuTarget, space: GpuSpace
                    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Every configuration of the space as columns, and `evaluate` on all of them."""
    grid = np.array(space.grids, dtype=np.int64)
    mesh = np.meshgrid(np.array(space.bm), np.array(space.bn), np.array(space.bk),
                       np.arange(len(grid)), np.array(space.stages), np.array(space.split_k),
                       np.array(space.persistent), indexing="ij")
    flat = [m.ravel() for m in mesh]
    cols = {"bm": flat[0], "bn": flat[1], "bk": flat[2], "gm": grid[flat[3], 0],
            "gn": grid[flat[3], 1], "st": flat[4], "sk": flat[5], "ps": flat[6]}
    return cols, evaluate(problem, target, space, cols)


def describe(problem: GemmProblem, target: GpuTarget, space: GpuSpace, tile: GpuTile
             ) -> dict[str, Any]:
    """Resource use and modeled time of a tile, for the kernel record."""
    m = evaluate_tile(problem, target, space, tile)
    seconds = m["total"] / target.clock_hz
    return {"smem_bytes": m["smem_main"], "smem_epilogue_bytes": m["smem_epi"],
            "regs_per_thread": m["regs"], "blocks_per_unit": m["bpu"],
            "est_time_s": seconds,
            "bound": "compute" if m["sm"] >= max(m["l2_cyc"], m["dram_cyc"]) else "memory",
            "model": {"blocks": m["blocks"], "waves": m["n_sm"], "cycles": m["total"],
                      "sm_cycles": m["sm"], "l2_cycles": m["l2_cyc"],
                      "dram_cycles": m["dram_cyc"], "objective": m["objective"]},
            "feasible": bool(m["ok"])}


def target_dict(target: GpuTarget) -> dict[str, Any]:
    """The target's facts (for debugging and the benchmark tables)."""
    return asdict(target)
