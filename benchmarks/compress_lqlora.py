"""LQ-LoRA against uniform NF-k, RTN/MatMulNBits and GQSA on MiniLM-L6 and SmolLM2-135M.

Quality as in benchmarks/compress_gqsa (evaluation passages no calibration sees): MiniLM-L6
mean cosine of `sentence_embedding` to fp32, SmolLM2-135M perplexity. Bits per weight are
*total stored* bits of the rewritten MatMul weights, the low-rank factors included (the
plan's `compression.bits_per_weight`, recounted by verify-plan from the initializers).
LQ-LoRA runs with `--budget-includes-lora`, so its points sit at or below their budget.
Also measured: the budget ILP against the best uniform config (factors outside the budget,
as the paper does), the frontier search against the paper's full error table on MiniLM-L6,
and the time of one 4096x4096 rank-64 decomposition.

    .venv/bin/python -m benchmarks.compress_lqlora [--quick]

`--quick` runs MiniLM-L6 only; `--timing-only` remeasures the decomposition time alone;
`--plot-only` redraws the plot from RESULTS.md; `--minilm-quality` re-measures MiniLM-L6's
quality and ILP rows and keeps the rest; `--smollm-quality` does the same for SmolLM2-135M.
SmolLM2-135M gets four budgets and fewer baselines (each of its compiles takes minutes
here); its GQSA points are read from the GQSA section (run benchmarks.compress_gqsa first).
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from benchmarks.compress_gqsa import Bench, _compile, _minilm, _score, _smollm, matrix_sites
from benchmarks.lqlora_table import compare_rows
from benchmarks.results import section, update_section
from mapper.compression.sites import find_sites, site_matrix
from mapper.loader import load_model
from mapper.options import CompressionConfig
from mapper.passes.lqlora import search
from mapper.passes.lqlora.decompose import decompose, estimate_errors
from mapper.passes.lqlora.emit import Emitted, emit
from mapper.passes.lqlora.grid import grid, storage_bits
from mapper.passes.lqlora.nf import NfConfig, quantize

PLOT = Path(__file__).with_name("lqlora_frontier.png")
TABLE_CONFIGS = 48


def table_configs() -> list[NfConfig]:
    """The configs the full-table comparison runs on."""
    configs = [c for c in grid("nf") if c.scale_dtype == "fp32" and c.scale_block == 256]
    assert len(configs) == TABLE_CONFIGS
    return configs


def _uniform_nf(bench: Bench, config: NfConfig) -> tuple[onnx.ModelProto, float]:
    """Every MatMul weight in one NF config, no low rank: the model and its stored bits."""
    model = load_model(bench.source).model
    sites, _ = find_sites(model, CompressionConfig(embeddings="off"))
    sites = [s for s in sites if s.kind != "gather" and s.cols % config.block == 0]
    items = [Emitted(s, quantize(site_matrix(model, s), config),
                     np.zeros((s.rows, 0), np.float32), np.zeros((0, s.cols), np.float32))
             for s in sites]
    bits = sum(storage_bits(config, s.rows, s.cols) for s in sites)
    return emit(model, items), bits / sum(s.rows * s.cols for s in sites)


def _row(bench: Bench, method: str, bits: float, quality: float, seconds: float | None,
         note: str = "") -> str:
    shown = f"{quality:.6f}" if bench.metric == "cosine" else f"{quality:.3f}"
    took = f"{seconds:.1f}" if seconds is not None else "-"
    return f"| {bench.name} | {method} | {bits:.3f} | {shown} | {took} | {note} |"


def _quality_rows(bench: Bench, tmp: Path, budgets: tuple[float, ...], gqsa: bool,
                  full: bool, int_budgets: tuple[float, ...] = ()
                  ) -> tuple[list[str], dict[str, list[tuple[float, float]]]]:
    rows = [_row(bench, "fp32", 32.0, _score(bench, bench.source), None)]
    points: dict[str, list[tuple[float, float]]] = {}

    def add(family: str, label: str, bits: float, quality: float, seconds: float | None,
            note: str = "") -> None:
        rows.append(_row(bench, label, bits, quality, seconds, note))
        points.setdefault(family, []).append((bits, quality))
        print(rows[-1], flush=True)

    runs = [("nf", b) for b in budgets] + [("int", b) for b in int_budgets]
    for grid_name, budget in runs:
        path, plan, seconds = _compile(bench, tmp, f"lqlora {grid_name} {budget}",
                                       {"method": "lqlora", "bits": budget},
                                       lqlora={"budget_includes_lora": True,
                                               "grid": grid_name})
        details = plan["compression"]["lqlora"]
        ranked = sum(1 for w in details["weights"] if w["rank"])
        family, label = (("LQ-LoRA (factors in budget)", f"LQ-LoRA budget {budget}")
                         if grid_name == "nf" else
                         ("LQ-LoRA, int grid", f"LQ-LoRA int grid, budget {budget}"))
        add(family, label, plan["compression"]["bits_per_weight"], _score(bench, path),
            seconds, f"{ranked}/{len(details['weights'])} weights keep rank > 0; ILP "
            f"{details['ilp']['status']}")
    for bits in (2, 3, 4):
        for block, scale_bits in ((64, 8), (32, 8), (16, 4))[:3 if full else 1]:
            config = NfConfig(bits, block, scale_bits, 256, "fp32")
            started = time.perf_counter()
            model, stored = _uniform_nf(bench, config)
            add("uniform NF-k", f"uniform {config.label()}", stored, _score(bench, model),
                time.perf_counter() - started)
    rtn = ((2, 32, "matmulnbits"), (2, 64, "matmulnbits"), (3, 64, "lut"), (3, 128, "lut"),
           (4, 64, "matmulnbits"), (4, 128, "matmulnbits"))
    for bits, group, fmt in rtn if full else rtn[1::2]:
        path, plan, seconds = _compile(bench, tmp, f"rtn {bits} {group}",
                                       {"method": "rtn", "bits": bits, "group_size": group,
                                        "format": fmt})
        add("RTN", f"RTN W{bits} g{group} ({fmt})", plan["compression"]["bits_per_weight"],
            _score(bench, path), seconds)
    if gqsa:
        for bits, group in ((2, 64), (3, 128), (4, 128)):
            path, plan, seconds = _compile(bench, tmp, f"gqsa {bits} {group}",
                                           {"method": "gqsa", "bits": bits,
                                            "group_size": group})
            add("GQSA (s=0)", f"GQSA W{bits} g{group}", plan["compression"]["bits_per_weight"],
                _score(bench, path), seconds)
    return rows, points


def _ilp_rows(bench: Bench, tmp: Path) -> list[str]:
    """The ILP against the best uniform config at 2.75 and 3.25 (factors outside)."""
    rows = []
    for budget in (2.75, 3.25):
        path, plan, seconds = _compile(bench, tmp, f"ilp {budget}",
                                       {"method": "lqlora", "bits": budget})
        details = plan["compression"]["lqlora"]
        ilp = details["ilp"]
        uniform = ilp["best_uniform"]
        rows.append(f"| {bench.name} | {budget} | {details['bits_per_weight_q']:.4f} | "
                    f"{ilp['objective']:.4g} | {uniform['objective']:.4g} "
                    f"({uniform['config']}) | {ilp['status']} | {details['table']['options']}"
                    f" / {details['table']['frontier']} / {details['table']['decomposed']} | "
                    f"{_score(bench, path):.6f} | {seconds:.1f} |")
        print(rows[-1], flush=True)
    return rows


def _table_rows(bench: Bench) -> list[str]:
    """The frontier search against the paper's full table (every option decomposed)."""
    from mapper.passes.lqlora.decompose import default_rank
    from mapper.passes.lqlora.lqlora_pass import _column_energy

    model, sites, calibration = matrix_sites(bench)
    energy = _column_energy(model, sites, calibration)
    matrices = [search.Matrix(s.weight, site_matrix(model, s), energy[s.activation],
                              (default_rank(s.rows, s.cols),)) for s in sites]
    # The full table costs one decomposition per (weight, config): here on the 48 configs
    # with fp32 second-level scales in groups of 256 (every b, b0 and B0; 1728
    # decompositions), the frontier search on the same configs.
    return compare_rows(matrices, table_configs())


def _timing_rows() -> list[str]:
    """One 4096x4096 matrix at rank 64: the estimates for the whole grid, and one
    decomposition to convergence."""
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((4096, 4096)) * 0.02).astype(np.float32)
    config = NfConfig(3, 64, 8, 256, "fp32")
    started = time.perf_counter()
    result = decompose(w, config, 64)
    decompose_s = time.perf_counter() - started
    started = time.perf_counter()
    estimate_errors(w, grid("nf"), 64, None)
    estimate_s = time.perf_counter() - started
    return [f"| 4096x4096, rank 64, {config.label()} | decomposition to convergence | "
            f"{decompose_s:.1f} | {result.iterations} iterations |",
            f"| 4096x4096, rank 64 | estimates of all 432 configs | {estimate_s:.1f} | |"]


def _plot(points: dict[str, dict[str, list[tuple[float, float]]]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(points), figsize=(6 * len(points), 4.5), squeeze=False)
    for axis, (model, families) in zip(axes[0], points.items(), strict=True):
        for family, series in families.items():
            series = sorted(series)
            axis.plot([b for b, _ in series], [q for _, q in series], marker="o", label=family)
        axis.set_xlabel("stored bits per weight (factors included)")
        if model == "MiniLM-L6":
            axis.set_ylabel("cosine to fp32")
        else:
            axis.set_ylabel("perplexity (log scale)")
            axis.set_yscale("log")
        axis.set_title(model)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(PLOT, dpi=110)


def _write(quality: list[str], ilp: list[str], table: list[str], timing: list[str],
           plotted: bool, note: str = "") -> None:
    """The RESULTS.md section from what has been measured so far."""
    body = "\n".join([
        "Rerun: `.venv/bin/python -m benchmarks.compress_lqlora`. Quality as in the GQSA "
        "section (MiniLM-L6: cosine of `sentence_embedding` to fp32 on 32 evaluation "
        "passages; SmolLM2-135M: perplexity on 16). Bits: total stored bits per rewritten "
        "weight, factors and decode tables included. LQ-LoRA rows use "
        "`--budget-includes-lora` and the default GPTQ-compensated Q; seconds are whole "
        "compiles. Calibration: 32 (MiniLM) / 8 (SmolLM) passages, for GQSA too." + note,
        *(["", f"![quality against stored bits]({PLOT.name})"] if plotted else []),
        "", "### Quality against stored bits", "",
        "| model | method | bits/weight | quality | seconds | note |",
        "|---|---|---|---|---|---|", *quality,
        "", "### The budget ILP against the best uniform config (factors outside the budget)",
        "",
        "| model | budget | Q bits/weight | ILP objective | best uniform objective | status "
        "| options / frontier / decomposed | quality | seconds |",
        "|---|---|---|---|---|---|---|---|---|", *ilp,
        "", "### Frontier search against the paper's full table (MiniLM-L6, 36 weights, "
        f"the {TABLE_CONFIGS} configs with fp32 second-level scales in groups of 256)", "",
        "| budget | decomposed (frontier) | seconds | decomposed (full) | seconds | same "
        "config | objective (frontier) | objective (full) | frontier vs full |",
        "|---|---|---|---|---|---|---|---|---|", *table,
        "", "### Decomposition time", "", "| matrix | what | seconds | note |",
        "|---|---|---|---|", *timing])
    update_section("compress-lqlora", "LQ-LoRA: low rank plus quantized", body)


_FAMILIES = (("LQ-LoRA budget", "LQ-LoRA (factors in budget)"),
             ("LQ-LoRA int grid", "LQ-LoRA, int grid"), ("uniform ", "uniform NF-k"),
             ("RTN ", "RTN"), ("GQSA ", "GQSA (s=0)"))


def _points_from_results() -> dict[str, dict[str, list[tuple[float, float]]]]:
    """The quality table's points, read back from RESULTS.md (`--plot-only`)."""
    text = section("compress-lqlora")
    table = text.split("### Quality against stored bits")[1].split("###")[0]
    points: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 4:
            continue
        family = next((name for prefix, name in _FAMILIES if cells[1].startswith(prefix)),
                      None)
        if family is not None:
            points.setdefault(cells[0], {}).setdefault(family, []).append(
                (float(cells[2]), float(cells[3])))
    return points


def _existing_rows(heading: str) -> list[str]:
    """The rows of one table of the section as RESULTS.md has them."""
    text = section("compress-lqlora")
    table = text.split(heading)[1].split("###")[0]
    return [line for line in table.splitlines()
            if line.startswith("| ") and not line.startswith(("| model |", "| budget |",
                                                              "| matrix |"))]


def _minilm_only() -> None:
    """Re-measure MiniLM-L6's quality and ILP rows; keep the other tables' rows as they
    are (`--minilm-quality`: SmolLM2's rows take most of an hour). The kept rows are read
    once the measuring is done, so a `--smollm-quality` run beside it is not undone."""
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        bench = _minilm(tmp)
        measured_ilp = _ilp_rows(bench, tmp)
        rows, _ = _quality_rows(bench, tmp, MINILM_BUDGETS, gqsa=True, full=True,
                                int_budgets=MINILM_INT_BUDGETS)
    quality = [r for r in _existing_rows("### Quality against stored bits")
               if not r.startswith("| MiniLM-L6 ")]
    ilp = [r for r in _existing_rows("### The budget ILP") if not r.startswith("| MiniLM-L6 ")]
    table = _existing_rows("### Frontier search against the paper's full table")
    timing = _existing_rows("### Decomposition time")
    _write(rows + quality, measured_ilp + ilp, table, timing, True)
    _plot(_points_from_results())


SMOLLM_BUDGETS = (2.5, 3.25, 4.0, 4.5)
# LQ-LoRA on the integer grid too (`--grid int`): at 2.5 bits its GPTQ-ranged 2-bit groups
# hold SmolLM2-135M together where NF2's fixed absmax blocks do not.
SMOLLM_INT_BUDGETS = (2.5, 3.25)
MINILM_BUDGETS = (2.5, 2.75, 3.0, 3.25, 3.5, 4.0, 4.5)
MINILM_INT_BUDGETS = (2.5, 3.25, 4.5)


def _gqsa_smollm_rows() -> list[str]:
    """SmolLM2-135M's dense GQSA points (s = 0, g128, stage 2 refit: the grid's first
    column) as the GQSA section measured them, relabelled for this table."""
    text = section("compress-gqsa")
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 5 and cells[0] == "SmolLM2-135M" and cells[1] in (
                "W2S0 g128", "W3S0 g128", "W4S0 g128"):
            label = f"GQSA W{cells[1][1]} g128"
            rows.append(f"| SmolLM2-135M | {label} | {cells[2]} | {cells[3]} | {cells[4]} | "
                        "from the GQSA section's grid |")
    return rows


def _smollm_only() -> None:
    """Re-measure SmolLM2-135M's quality rows with the compensated Q (`--smollm-quality`),
    beside GQSA's SmolLM2 points from its own section; keep the other tables' rows."""
    quality = [r for r in _existing_rows("### Quality against stored bits")
               if not r.startswith("| SmolLM2-135M ")]
    ilp = _existing_rows("### The budget ILP")
    table = _existing_rows("### Frontier search against the paper's full table")
    timing = _existing_rows("### Decomposition time")
    with tempfile.TemporaryDirectory() as tmp_name:
        bench = _smollm(Path(tmp_name))
        rows, _ = _quality_rows(bench, Path(tmp_name), SMOLLM_BUDGETS, gqsa=False, full=False,
                                int_budgets=SMOLLM_INT_BUDGETS)
    _write(quality + rows + _gqsa_smollm_rows(), ilp, table, timing, True)
    _plot(_points_from_results())


def _rewrite_timing(timing: list[str]) -> None:
    """Replace only the decomposition-time table of the section (`--timing-only`: that
    figure is worth measuring on a quiet machine, and the rest takes 40 minutes)."""
    from benchmarks.results import RESULTS

    text = RESULTS.read_text()
    start = text.index("<!-- compress-lqlora:start -->")
    head = text.index("### Decomposition time", start)
    end = text.index("<!-- compress-lqlora:end -->", start)
    table = "\n".join(["### Decomposition time", "", "| matrix | what | seconds | note |",
                       "|---|---|---|---|", *timing, ""])
    RESULTS.write_text(text[:head] + table + text[end:])


def main() -> None:
    """Run the measurements, writing the RESULTS.md section after each stage."""
    logging.disable(logging.WARNING)
    if "--plot-only" in sys.argv:
        _plot(_points_from_results())
        return
    if "--timing-only" in sys.argv:
        _rewrite_timing(_timing_rows())
        return
    if "--minilm-quality" in sys.argv:
        _minilm_only()
        return
    if "--smollm-quality" in sys.argv:
        _smollm_only()
        return
    quick = "--quick" in sys.argv
    quality: list[str] = []
    ilp: list[str] = []
    table: list[str] = []
    points: dict[str, dict[str, list[tuple[float, float]]]] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        timing = _timing_rows()
        bench = _minilm(tmp)
        ilp += _ilp_rows(bench, tmp)
        rows, points[bench.name] = _quality_rows(
            bench, tmp, MINILM_BUDGETS, gqsa=True, full=True, int_budgets=MINILM_INT_BUDGETS)
        quality += rows
        _plot(points)
        _write(quality, ilp, table, timing, True)
        table += _table_rows(bench)
        _write(quality, ilp, table, timing, True)
        if not quick:
            bench = _smollm(tmp)
            rows, points[bench.name] = _quality_rows(bench, tmp, SMOLLM_BUDGETS,
                                                     gqsa=False, full=False,
                                                     int_budgets=SMOLLM_INT_BUDGETS)
            rows += _gqsa_smollm_rows()
            quality += rows
            _plot(points)
            _write(quality, ilp, table, timing, True)
    print((Path(__file__).with_name("RESULTS.md")).read_text().split("compress-lqlora")[1])


if __name__ == "__main__":
    main()
