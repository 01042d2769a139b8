"""Activation arenas of every reference model and corpus CNN: our arena vs the lower bound
vs greedy-by-size (issue 5 acceptance: within 1% of the lower bound on every one).

Each model is loaded as `mapper compile` loads it; its activations get one buffer each over
the model's own order (what the arena pass sees when the memory pass keeps the order), and
the arena pass's solver runs with the default 30 s budget. Writes the `arena-models`
section of benchmarks/RESULTS.md and prints the table.

    .venv/bin/python -m benchmarks.arena_models [--time-limit 30] [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.results import update_section  # noqa: E402
from mapper.graph import GraphView  # noqa: E402
from mapper.loader import ShapeSpec, load_model  # noqa: E402
from mapper.passes.arena import activation_buffers, find_conflicts, minimize_arena  # noqa: E402


def _models() -> list[tuple[str, str, Path, ShapeSpec]]:
    import models
    from models import corpus
    from models._registry import get_spec

    found = []
    for name in models.REFERENCE_MODELS:
        spec = get_spec(name)
        dims = {dim: value.example for dim, value in spec.dynamic_dims.items()}
        found.append(("reference", name, models.build(name), ShapeSpec({}, dims)))
    for name in corpus.names("cnn"):
        shapes = corpus.CORPUS[name].input_shapes or {}
        found.append(("corpus", name, corpus.fetch(name), ShapeSpec(dict(shapes), {})))
    return found


def main() -> None:
    """Plan every model's arena, print and record the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--time-limit", type=float, default=30.0)
    parser.add_argument("--runs", type=int, default=3, help="timed runs per model")
    args = parser.parse_args()
    rows, gaps, greedy_gaps = [], [], []
    for kind, name, path, shapes in _models():
        view = GraphView.from_model(load_model(path, shapes).model)
        buffers = activation_buffers(view, view.model_order)
        results, times = [], []
        for _ in range(max(args.runs, 1)):
            started = time.perf_counter()
            results.append(minimize_arena(buffers, args.time_limit))
            times.append(time.perf_counter() - started)
        result = results[0]
        assert all(r.offsets == result.offsets for r in results), "not deterministic"
        assert not find_conflicts(buffers, result.offsets), name
        gap = result.size / result.lower_bound - 1 if result.lower_bound else 0.0
        greedy_gap = result.greedy_by_size / result.lower_bound - 1 if result.lower_bound \
            else 0.0
        gaps.append(gap)
        greedy_gaps.append(greedy_gap)
        status = "optimal" if result.optimal else ("timeout" if result.timed_out else "feasible")
        rows.append(f"| {name} ({kind}) | {len(view.nodes)} | {len(buffers)} | "
                    f"{result.lower_bound:,} | {result.greedy_by_size:,} (+{greedy_gap:.2%}) | "
                    f"{result.size:,} | {gap:+.2%} | {statistics.median(times):.3f} | "
                    f"{result.method} | {status} |")
        print(rows[-1], flush=True)
    within = sum(g <= 0.01 for g in gaps)
    body = ("Arena (all activations in one device buffer) per model over its own order, "
            f"default budget {args.time_limit:g} s; time is the median of {args.runs} run(s). "
            "Gap = arena / lower bound - 1 (lower bound = most bytes live at one step). "
            "Target: within 1% of the lower bound on every model.\n\n"
            f"**{within}/{len(gaps)} within 1%; largest gap {max(gaps):+.2%} (greedy-by-size: "
            f"largest {max(greedy_gaps):+.2%}, {sum(g > 0 for g in greedy_gaps)} models above "
            "the bound).**\n\n"
            "| model | nodes | buffers | lower bound | greedy-by-size | arena | gap | time s | "
            "method | status |\n|---|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows)
            + "\n\n\"optimal\": the arena equals the lower bound, so it is proven minimal. "
            "Reproduce: `.venv/bin/python -m benchmarks.arena_models`")
    update_section("arena-models", "Arena: reference models and corpus CNNs (issue 5)", body)


if __name__ == "__main__":
    main()
