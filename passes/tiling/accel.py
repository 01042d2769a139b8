"""Accelerator GEMM tiles: loop tiling into the scratchpad, mapped onto the PE/systolic array.

The GEMM runs as a three-deep loop nest over tiles Tm x Tn x Tk held in the software-managed
on-chip level (the hardware model's `managed` level: TPU VMEM, an NPU scratchpad, Eyeriss's
global buffer), double-buffered so DMA of the next tiles overlaps compute on the current
ones. Each tile is computed on the array as weight-stationary passes: an R x C block of B
(R rows along K, C columns along N) sits in the array while Tm rows of A stream through.

Decision variables:
  Tm, Tn, Tk   tile sizes: multiples of the array geometry (Tm of the row granule m, Tn of
               C, Tk of R; from `compute.matrix_shapes[dtype]` = (m, C, R), else
               `compute.array` = (R, C) with m = 1, else a square array of the dtype's MACs
               per cycle), in a geometric ladder plus the whole (padded) dimension
  stationary   which operand the innermost tile loop keeps in the scratchpad:
               output (k innermost: C accumulates on chip, A re-read N/Tn times, B M/Tm times),
               weight (m innermost: B read once, A re-read, C partial sums spilled and
               reloaded between k tiles), input (n innermost: A read once, B re-read, spills)

Constraints (checked again by `constraints.py`):
  2*(Tm*Tk*a + Tk*Tn*b) + 2*Tm*Tn*32 bits <= scratchpad capacity (per core when the level
  is per unit): double-buffered A and B tiles and a double-buffered 32-bit accumulator tile;
  Tm, Tn, Tk multiples of the array geometry.

Cost model (integer array cycles; rates x16 fixed point):
  per tile  = ceil(Tk/R)*ceil(Tn/C) passes of max(Tm, R) cycles (streaming Tm rows; the next
              weight block loads behind the stream once Tm >= R) / the arrays per core
              + R + C (fill and drain of the array once per tile)
  compute   = ceil(batch*ceil(M/Tm)*ceil(N/Tn) / cores) * ceil(K/Tk) * per tile
  DRAM      = A*(1 or N/Tn tiles) + B*(1 or M/Tm tiles) + C + spilled fp32 partials
              (2 x 4 bytes per output per extra k tile), at ETA_MEM of its bandwidth
  on-chip   = per pass, the A rows, the weight block and the partial sums move through the
              scratchpad at its bandwidth
  time      = max(compute, DRAM, on-chip) + (the others) / LEAK + the first tiles' load
              (nothing to overlap it with)
  objective = 4 * time + (0 output, 1 weight, 2 input stationary) on ties.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from mapper.errors import InfeasibleError, UserError
from mapper.hwmodels.schema import Hardware
from mapper.passes.tiling.cpsat import Builder, SolveLimits, SolveOutcome
from mapper.passes.tiling.gpu import ETA_MEM, LEAK
from mapper.passes.tiling.problems import GemmProblem

SCALE = 16
ACC_BITS = 32
MAX_LADDER = 16           # sizes per dimension: the ladder g, 2g, 4g, ... and the whole
STATIONARY = ("output", "weight", "input")
LOOP_ORDER = {"output": "m,n,k", "weight": "n,k,m", "input": "m,k,n"}
OBJECTIVE_WEIGHT = 4


@dataclass(frozen=True)
class AccelTarget:
    """The integer facts about one accelerator and dtype the loop-tiling model needs."""

    name: str
    dtype: str
    clock_hz: float
    rows: int                 # R: array rows, along K
    cols: int                 # C: array columns, along N
    granule: int              # rows of A per array step (Tm granule)
    rate_q: int               # arrays per core x SCALE (may be < SCALE: time-multiplexed)
    cores: int                # compute units that each own a scratchpad
    capacity: int             # scratchpad bytes per core
    level: str                # the scratchpad's name in the hardware model
    sram_q: int               # scratchpad bytes per cycle per core x SCALE
    dram_q: int               # main-memory bytes per cycle (device) x SCALE, after ETA_MEM
    geometry_source: str      # matrix_shapes | array | derived


@dataclass(frozen=True)
class AccelTile:
    """One loop-nest tiling (the decision)."""

    tm: int
    tn: int
    tk: int
    stationary: str

    def to_dict(self, target: AccelTarget) -> dict[str, Any]:
        """The record's `tile` object: loop-nest fields for accelerators."""
        return {"Tm": self.tm, "Tn": self.tn, "Tk": self.tk, "stationary": self.stationary,
                "loop_order": LOOP_ORDER[self.stationary], "double_buffer": True,
                "array": [target.rows, target.cols], "cores": target.cores}


@dataclass(frozen=True)
class AccelSpace:
    """Candidate tile sizes per dimension and the stationary choices."""

    tm: tuple[int, ...]
    tn: tuple[int, ...]
    tk: tuple[int, ...]
    stationary: tuple[int, ...]

    @property
    def size(self) -> int:
        """Number of candidate tilings (before constraints)."""
        return len(self.tm) * len(self.tn) * len(self.tk) * len(self.stationary)


def accel_target(hardware: Hardware, dtype: str) -> AccelTarget:
    """The accelerator facts for `dtype`."""
    if hardware.kind == "gpu":
        raise UserError(f"{hardware.name} is a GPU; the loop-tiling model is for TPUs/NPUs")
    peak = hardware.peak(dtype)
    if not peak:
        raise InfeasibleError(f"{hardware.name} has no {dtype} GEMM support")
    compute = hardware.compute
    clock = compute.clock_hz
    shape = compute.matrix_shapes.get(dtype)  # type: ignore[call-overload]
    if shape is not None:
        granule, cols, rows = (int(v) for v in shape)
        source = "matrix_shapes"
    elif compute.array is not None:
        rows, cols = (int(v) for v in compute.array)
        granule, source = 1, "array"
    else:
        # No geometry in the model: a square array doing the dtype's MACs per cycle.
        macs = max(1, round(peak / (2 * clock)))
        rows = 1 << int(math.log2(math.isqrt(macs)) if macs > 1 else 0)
        cols = max(1, macs // rows)
        granule, source = 1, "derived"
    main_name, main = hardware.main_memory
    managed = hardware.managed_level
    if managed is None:
        on_chip = [(n, lv) for n, lv in hardware.memory.items() if n != main_name]
        if not on_chip:
            raise UserError(f"{hardware.name} has no on-chip memory level to tile into")
        managed = max(on_chip, key=lambda item: item[1].size)
    level_name, level = managed
    cores = compute.units if level.scope == "unit" else 1
    arrays = peak / (2 * rows * cols * clock)
    return AccelTarget(
        name=hardware.name, dtype=dtype, clock_hz=clock, rows=rows, cols=cols,
        granule=granule, rate_q=max(1, round(arrays / cores * SCALE)), cores=cores,
        capacity=level.size, level=level_name,
        sram_q=max(1, round(level.bandwidth / clock * SCALE)),
        dram_q=max(1, round(main.bandwidth * ETA_MEM / clock * SCALE)), geometry_source=source)


def _ladder(extent: int, granule: int) -> tuple[int, ...]:
    padded = -(-extent // granule) * granule
    values, v = [], granule
    while v < padded and len(values) < MAX_LADDER - 1:
        values.append(v)
        v *= 2
    values.append(padded)
    return tuple(values)


def accel_space(problem: GemmProblem, target: AccelTarget) -> AccelSpace:
    """Tile-size ladders (granule x 2^i, and the whole padded dimension)."""
    return AccelSpace(tm=_ladder(problem.m, target.granule), tn=_ladder(problem.n, target.cols),
                      tk=_ladder(problem.k, target.rows), stationary=(0, 1, 2))


def _cdiv(a: Any, b: Any) -> Any:
    return -(-a // b)


def evaluate(problem: GemmProblem, target: AccelTarget, cols: Mapping[str, np.ndarray]
             ) -> dict[str, np.ndarray]:
    """The loop-tiling cost model on arrays of tilings (keys tm tn tk st)."""
    p, t = problem, target
    tm_, tn_, tk_ = (np.asarray(cols[k], dtype=np.int64) for k in ("tm", "tn", "tk"))
    st = np.asarray(cols["st"], dtype=np.int64)
    r, c = t.rows, t.cols
    trips_m, trips_n, trips_k = _cdiv(p.m, tm_), _cdiv(p.n, tn_), _cdiv(p.k, tk_)
    passes = _cdiv(tk_, r) * _cdiv(tn_, c)
    per_tile = _cdiv(passes * np.maximum(tm_, r) * SCALE, t.rate_q) + r + c
    per_core = _cdiv(p.batch * trips_m * trips_n, t.cores)
    core_tiles = per_core * trips_k
    compute = core_tiles * per_tile
    tile_bits = tm_ * tk_ * p.a_bits + tk_ * tn_ * p.b_bits
    footprint_bits = 2 * tile_bits + 2 * tm_ * tn_ * ACC_BITS
    checks = {f"scratchpad capacity ({t.level}, double-buffered)":
              footprint_bits <= t.capacity * 8,
              "array geometry": (tm_ % t.granule == 0) & (tn_ % c == 0) & (tk_ % r == 0)}
    ok = np.logical_and.reduce(list(checks.values()))
    reload_a = np.where(st == 2, 1, trips_n)
    reload_b = np.where(st == 1, 1, trips_m)
    spill = np.where(st == 0, 0, p.batch * p.m * p.n * (2 * ACC_BITS // 8) * (trips_k - 1))
    dram = p.a_bytes * reload_a + p.b_bytes * reload_b + p.c_bytes + spill
    dram_cyc = _cdiv(dram * SCALE, t.dram_q)
    pass_bits = tm_ * r * p.a_bits + r * c * p.b_bits + tm_ * c * ACC_BITS
    sram_cyc = _cdiv(core_tiles * passes * pass_bits * (SCALE // 8), t.sram_q)
    prologue = _cdiv(tile_bits * (SCALE // 8), t.dram_q)
    binding = np.maximum(compute, np.maximum(dram_cyc, sram_cyc))
    total = binding + _cdiv(compute + dram_cyc + sram_cyc - binding, LEAK) + prologue
    objective = total * OBJECTIVE_WEIGHT + st
    return {"ok": ok, "checks": checks,
            "passes": passes, "per_tile": per_tile, "core_tiles": core_tiles,
            "compute": compute, "footprint_bytes": _cdiv(footprint_bits, 8), "dram": dram,
            "dram_cyc": dram_cyc, "sram_cyc": sram_cyc, "prologue": prologue, "total": total,
            "objective": objective}


def tile_columns(tiles: list[AccelTile]) -> dict[str, np.ndarray]:
    """Tilings as the column arrays `evaluate` takes."""
    return {"tm": np.array([t.tm for t in tiles]), "tn": np.array([t.tn for t in tiles]),
            "tk": np.array([t.tk for t in tiles]),
            "st": np.array([STATIONARY.index(t.stationary) for t in tiles])}


def evaluate_tile(problem: GemmProblem, target: AccelTarget, tile: AccelTile) -> dict[str, int]:
    """The cost model for one tiling, as plain ints."""
    result = evaluate(problem, target, tile_columns([tile]))
    return {key: int(value[0]) for key, value in result.items() if key != "checks"}


def explain_infeasible(problem: GemmProblem, target: AccelTarget, space: AccelSpace) -> str:
    """Why no tiling fits: the constraints no candidate meets."""
    _, result = enumerate_space(problem, target, space)
    never = [name for name, mask in result["checks"].items() if not mask.any()]
    smallest = min(space.tm) * min(space.tk) * problem.a_bits + min(space.tk) * min(
        space.tn) * problem.b_bits
    need = (2 * smallest + 2 * min(space.tm) * min(space.tn) * ACC_BITS) // 8
    return (f"no candidate meets: {', '.join(never) or 'all constraints together'}; the "
            f"smallest double-buffered tiles need {need} B, the {target.level} holds "
            f"{target.capacity} B")


def enumerate_space(problem: GemmProblem, target: AccelTarget, space: AccelSpace
                    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Every tiling of the space as columns, and `evaluate` on all of them."""
    mesh = np.meshgrid(np.array(space.tm), np.array(space.tn), np.array(space.tk),
                       np.array(space.stationary), indexing="ij")
    cols = {"tm": mesh[0].ravel(), "tn": mesh[1].ravel(), "tk": mesh[2].ravel(),
            "st": mesh[3].ravel()}
    return cols, evaluate(problem, target, cols)


def heuristic(problem: GemmProblem, target: AccelTarget, space: AccelSpace) -> AccelTile | None:
    """A compiler's first guess: output-stationary, one array block of N, the largest square
    Tm x Tk that fits, else the first feasible tiling (ConstrINT-style)."""
    tn = space.tn[0]
    for tm, tk in sorted(((a, b) for a in space.tm for b in space.tk),
                         key=lambda ab: (-min(ab), -max(ab))):
        tile = AccelTile(tm, tn, tk, "output")
        if evaluate_tile(problem, target, tile)["ok"]:
            return tile
    return first_feasible(problem, target, space)


def first_feasible(problem: GemmProblem, target: AccelTarget, space: AccelSpace
                   ) -> AccelTile | None:
    """ConstrINT's answer: the first tiling satisfying every constraint, largest first."""
    for tm in space.tm[::-1]:
        for tn in space.tn[::-1]:
            for tk in space.tk[::-1]:
                tile = AccelTile(tm, tn, tk, "output")
                if evaluate_tile(problem, target, tile)["ok"]:
                    return tile
    return None


def solve_cpsat(problem: GemmProblem, target: AccelTarget, space: AccelSpace,
                hint: AccelTile | None, limits: SolveLimits
                ) -> tuple[AccelTile | None, SolveOutcome]:
    """The optimum of `evaluate` over `space`, posed to CP-SAT."""
    p, t = problem, target
    b = Builder()
    mdl = b.model
    r, c = t.rows, t.cols
    itm = b.choice("itm", range(len(space.tm)))
    itn = b.choice("itn", range(len(space.tn)))
    itk = b.choice("itk", range(len(space.tk)))
    st = b.choice("st", space.stationary)
    decisions = {"itm": itm, "itn": itn, "itk": itk, "st": st}
    tm_v, tn_v, tk_v = space.tm, space.tn, space.tk
    size_m = b.table(itm, 0, tm_v, "Tm")
    size_n = b.table(itn, 0, tn_v, "Tn")
    size_k = b.table(itk, 0, tk_v, "Tk")
    trips_m_v = [_cdiv(p.m, v) for v in tm_v]
    trips_n_v = [_cdiv(p.n, v) for v in tn_v]
    trips_k_v = [_cdiv(p.k, v) for v in tk_v]
    trips_m = b.table(itm, 0, trips_m_v, "trips_m")
    trips_n = b.table(itn, 0, trips_n_v, "trips_n")
    trips_k = b.table(itk, 0, trips_k_v, "trips_k")
    kp = b.table(itk, 0, [_cdiv(v, r) for v in tk_v], "kp")
    np_ = b.table(itn, 0, [_cdiv(v, c) for v in tn_v], "np")
    stream = b.table(itm, 0, [max(v, r) for v in tm_v], "stream")
    kp_v = [_cdiv(v, r) for v in tk_v]
    np_v = [_cdiv(v, c) for v in tn_v]
    stream_v = [max(v, r) for v in tm_v]
    # Upper bounds by dimension: the cost terms are products of per-dimension factors, so
    # the largest of each factor's per-dimension product bounds them without overflow.
    per_m = max(a * b for a, b in zip(trips_m_v, stream_v, strict=True))
    per_n = max(a * b for a, b in zip(trips_n_v, np_v, strict=True))
    per_k = max(a * b for a, b in zip(trips_k_v, kp_v, strict=True))
    passes_hi = max(kp_v) * max(np_v)
    passes = b.product([kp, np_], passes_hi, "passes")
    work_hi = passes_hi * max(stream_v)
    work = b.product([passes, stream], work_hi, "work")
    tile_cyc_hi = _cdiv(work_hi * SCALE, t.rate_q) + r + c
    per_tile = b.ceildiv(work * SCALE, t.rate_q, tile_cyc_hi, "per_tile_core")
    out_hi = p.batch * trips_m_v[0] * trips_n_v[0]
    out_tiles = b.product([trips_m, trips_n], trips_m_v[0] * trips_n_v[0], "out_tiles")
    per_core = b.ceildiv(out_tiles * p.batch, t.cores, _cdiv(out_hi, t.cores), "per_core")
    core_tiles_hi = _cdiv(out_hi, t.cores) * trips_k_v[0]
    core_tiles = b.product([per_core, trips_k], core_tiles_hi, "core_tiles")
    compute_hi = p.batch * (per_m * per_n * per_k * SCALE // t.rate_q + per_m * per_n * per_k
                            + trips_m_v[0] * trips_n_v[0] * trips_k_v[0] * (r + c + 1))
    compute = b.product([core_tiles, per_tile + r + c], compute_hi, "compute")
    mk = b.product([size_m, size_k], tm_v[-1] * tk_v[-1], "TmTk")
    kn = b.product([size_k, size_n], tk_v[-1] * tn_v[-1], "TkTn")
    mn = b.product([size_m, size_n], tm_v[-1] * tn_v[-1], "TmTn")
    tile_bits = b.var(0, tm_v[-1] * tk_v[-1] * p.a_bits + tk_v[-1] * tn_v[-1] * p.b_bits,
                      "tile_bits")
    mdl.add(tile_bits == mk * p.a_bits + kn * p.b_bits)
    mdl.add(2 * tile_bits + 2 * ACC_BITS * mn <= t.capacity * 8)
    is_out, is_w, is_in = b.bool("out"), b.bool("weight"), b.bool("input")
    mdl.add_exactly_one([is_out, is_w, is_in])
    for flag, value in ((is_out, 0), (is_w, 1), (is_in, 2)):
        mdl.add(st == value).only_enforce_if(flag)
    reload_a = b.var(1, trips_n_v[0], "reload_a")
    mdl.add(reload_a == 1).only_enforce_if(is_in)
    mdl.add(reload_a == trips_n).only_enforce_if(~is_in)
    reload_b = b.var(1, trips_m_v[0], "reload_b")
    mdl.add(reload_b == 1).only_enforce_if(is_w)
    mdl.add(reload_b == trips_m).only_enforce_if(~is_w)
    spill_unit = p.batch * p.m * p.n * (2 * ACC_BITS // 8)
    spill = b.var(0, spill_unit * (trips_k_v[0] - 1), "spill")
    mdl.add(spill == 0).only_enforce_if(is_out)
    mdl.add(spill == spill_unit * (trips_k - 1)).only_enforce_if(~is_out)
    dram_hi = (p.a_bytes * trips_n_v[0] + p.b_bytes * trips_m_v[0] + p.c_bytes
               + spill_unit * (trips_k_v[0] - 1))
    dram = b.var(0, dram_hi, "dram")
    mdl.add(dram == p.a_bytes * reload_a + p.b_bytes * reload_b + p.c_bytes + spill)
    dram_cyc = b.ceildiv(dram * SCALE, t.dram_q, _cdiv(dram_hi * SCALE, t.dram_q), "dram_cyc")
    pass_bits_v = [v * r * p.a_bits + r * c * p.b_bits + v * c * ACC_BITS for v in tm_v]
    pass_bits = b.table(itm, 0, pass_bits_v, "pass_bits")
    moves_hi = p.batch * trips_m_v[0] * per_n * per_k
    moves = b.product([core_tiles, passes], moves_hi, "moves")
    sram_bits_hi = p.batch * max(a * b for a, b in zip(trips_m_v, pass_bits_v, strict=True)) \
        * per_n * per_k
    sram_bits = b.product([moves, pass_bits], sram_bits_hi, "sram_bits")
    sram_cyc = b.ceildiv(sram_bits * (SCALE // 8), t.sram_q,
                         _cdiv(sram_bits_hi * (SCALE // 8), t.sram_q), "sram_cyc")
    prologue = b.ceildiv(tile_bits * (SCALE // 8), t.dram_q, _cdiv(
        (tm_v[-1] * tk_v[-1] * p.a_bits + tk_v[-1] * tn_v[-1] * p.b_bits) * (SCALE // 8),
        t.dram_q), "prologue")
    total_hi = max(compute_hi, _cdiv(dram_hi * SCALE, t.dram_q),
                   _cdiv(sram_bits_hi * (SCALE // 8), t.sram_q))
    binding = b.maximum([compute, dram_cyc, sram_cyc], 0, total_hi, "binding")
    leak = b.ceildiv(compute + dram_cyc + sram_cyc - binding, LEAK, _cdiv(2 * total_hi, LEAK),
                     "leak")
    objective = (binding + leak + prologue) * OBJECTIVE_WEIGHT + st
    hint_values = None
    if hint is not None:
        hint_values = {"itm": space.tm.index(hint.tm), "itn": space.tn.index(hint.tn),
                       "itk": space.tk.index(hint.tk), "st": STATIONARY.index(hint.stationary)}
    outcome = b.solve([objective], decisions, hint_values, limits)
    if outcome.values is None:
        return None, outcome
    v = outcome.values
    tile = AccelTile(space.tm[v["itm"]], space.tn[v["itn"]], space.tk[v["itk"]],
                     STATIONARY[v["st"]])
    return tile, outcome


def describe(problem: GemmProblem, target: AccelTarget, tile: AccelTile) -> dict[str, Any]:
    """Resource use and modeled time of a tiling, for the kernel record."""
    m = evaluate_tile(problem, target, tile)
    seconds = m["total"] / target.clock_hz
    return {"smem_bytes": m["footprint_bytes"], "regs_per_thread": None,
            "blocks_per_unit": None, "est_time_s": seconds,
            "bound": "compute" if m["compute"] >= max(m["dram_cyc"], m["sram_cyc"])
            else "memory",
            "model": {"cycles": m["total"], "compute_cycles": m["compute"],
                      "dram_cycles": m["dram_cyc"], "scratchpad_cycles": m["sram_cyc"],
                      "dram_bytes": m["dram"], "objective": m["objective"],
                      "scratchpad": target.level, "geometry": target.geometry_source},
            "feasible": bool(m["ok"])}
