"""`mapper arena solve`: the arena solver on MiniMalloc CSV problems (CONTRACTS.md section 4)."""

from __future__ import annotations

from pathlib import Path

import click

from mapper.console import emit_json
from mapper.errors import UserError
from mapper.outputs import check_output_file, write_output_file
from mapper.passes.arena.csv import format_solution, read_csv
from mapper.passes.arena.greedy import greedy_by_size
from mapper.passes.arena.problem import find_conflicts, lower_bound
from mapper.passes.arena.solve import fit_capacity, minimize_arena
from mapper.units import parse_size


def _is_solution(path: Path) -> bool:
    """An earlier solution CSV: its header's last column is the offset this command adds."""
    with path.open("r", errors="replace") as handle:
        return handle.readline().strip().split(",")[-1].strip() == "offset"


@click.group("arena")
def arena_group() -> None:
    """Device-memory arenas: offsets for buffers with fixed lifetimes."""


@arena_group.command("solve")
@click.argument("problem", type=click.Path(path_type=Path))
@click.option("--capacity", metavar="SIZE",
              help="Bytes every buffer must fit below (1048576, 1MiB); omitted: minimize.")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="Solution CSV: the input rows with an offset column added.")
@click.option("--method", type=click.Choice(["auto", "search", "cp-sat", "greedy"]),
              default="auto", show_default=True,
              help="greedy-by-size, the MiniMalloc-class search, CP-SAT, or all in turn.")
@click.option("--time-limit", type=click.FloatRange(min=0, min_open=True), default=30.0,
              show_default=True, help="Solver budget, seconds.")
@click.option("--seed", type=int, default=0, show_default=True, help="Solver seed.")
@click.option("--force", is_flag=True,
              help="Replace an existing output file that is not an earlier solution.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
def arena_solve(problem: Path, capacity: str | None, output: Path, method: str,
                time_limit: float, seed: int, force: bool, as_json: bool) -> None:
    """Place the buffers of a MiniMalloc CSV (id,lower,upper,size) within a capacity.

    Exit 0 when every buffer fits, 3 when no placement can, 5 when the time limit ran out
    first (nothing is written then).
    """
    parsed = read_csv(problem)
    check_output_file(output, force=force, ours=_is_solution, what="solution")
    buffers = parsed.buffers
    limit = parse_size(capacity) if capacity is not None else None
    if limit is not None and limit < 0:
        raise UserError(f"--capacity {capacity!r} is negative")
    if limit is not None:
        fit = fit_capacity(buffers, limit, time_limit, seed, method)  # type: ignore[arg-type]
        offsets, peak, used, nodes, seconds = (fit.offsets, fit.peak, fit.method, fit.nodes,
                                               fit.seconds)
        optimal = None
    else:
        best = minimize_arena(buffers, time_limit, seed, method)  # type: ignore[arg-type]
        offsets, peak, used, nodes, seconds = (best.offsets, best.size, best.method,
                                               best.nodes, best.seconds)
        optimal = best.optimal
    problems = find_conflicts(buffers, offsets, limit)
    if problems:  # the solvers' own answer is re-checked before anything is written
        raise AssertionError(f"arena solution failed its check: {problems[0]}")
    write_output_file(output, format_solution(parsed, offsets), force=force, ours=_is_solution,
                      what="solution")
    summary = {"problem": str(problem), "buffers": len(buffers), "capacity": limit,
               "lower_bound": lower_bound(buffers),
               "greedy_by_size": greedy_by_size(buffers).peak(buffers), "peak": peak,
               "optimal": optimal, "method": used, "nodes": nodes,
               "seconds": round(seconds, 4), "output": str(output)}
    if as_json:
        emit_json(summary)
        return
    target = f"within {limit} bytes" if limit is not None else "in the smallest arena found"
    proof = "" if optimal is None else (" (proven optimal)" if optimal else " (not proven "
                                                                         "optimal)")
    click.echo(f"placed {len(buffers)} buffers {target}: peak {peak}{proof}, lower bound "
               f"{summary['lower_bound']}, greedy-by-size {summary['greedy_by_size']}; "
               f"{used}, {nodes} search nodes, {seconds:.2f} s -> {output}")
