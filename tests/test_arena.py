"""The arena solver (CONTRACTS.md section 4): bounds, greedy-by-size, the MiniMalloc-class
search against CP-SAT, MiniMalloc's CSV format, `mapper arena solve`, and the arena pass."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from mapper.driver import compile_model
from mapper.errors import InfeasibleError, TimeLimitError, UserError
from mapper.options import ArenaConfig, CompileOptions
from mapper.passes.arena import (
    Buffer,
    find_conflicts,
    fit_capacity,
    greedy_by_size,
    lower_bound,
    minimize_arena,
    search_capacity,
)
from mapper.passes.arena.cpsat import solve_cpsat
from mapper.passes.arena.csv import format_solution, parse_csv
from mapper.verify_plan import greedy_peak, live_peak
from tests import onnx_builders
from tests.conftest import run_mapper
from tests.plan_checks import assert_output_valid
from tests.test_verify_plan import tiny_model

MINIMALLOC = Path("/work/shared/benchmarks/minimalloc")
# MiniMalloc's README example: feasible at 12 (its peak), which greedy-by-size also meets.
README_EXAMPLE = "id,lower,upper,size\nb1,0,3,4\nb2,3,9,4\nb3,0,9,4\nb4,9,21,4\nb5,0,21,4\n"
# Greedy-by-size is not optimal here: 10 against the lower bound 7, which is achievable.
GREEDY_TRAP = [Buffer("a", 0, 1, 4), Buffer("b", 2, 3, 4), Buffer("c", 1, 4, 3),
               Buffer("d", 0, 2, 3)]


def _random_buffers(rng: random.Random, count: int, horizon: int,
                    alignments: tuple[int, ...] = (1,)) -> list[Buffer]:
    buffers = []
    for index in range(count):
        lower = rng.randrange(horizon)
        upper = rng.randint(lower + 1, min(horizon, lower + 4))
        buffers.append(Buffer(f"t{index}", lower, upper, rng.choice([1, 2, 3, 5, 8, 13]),
                              rng.choice(alignments)))
    return buffers


def test_lower_bound_uses_half_open_lifetimes():
    assert lower_bound([Buffer("a", 0, 2, 5), Buffer("b", 2, 4, 7)]) == 7
    assert lower_bound([Buffer("a", 0, 3, 5), Buffer("b", 2, 4, 7)]) == 12
    assert lower_bound([]) == 0


def test_greedy_by_size_places_largest_first_at_lowest_fit():
    solution = greedy_by_size(GREEDY_TRAP)
    assert solution.offsets == (0, 0, 7, 4)
    assert solution.peak(GREEDY_TRAP) == 10 and lower_bound(GREEDY_TRAP) == 7
    assert find_conflicts(GREEDY_TRAP, solution.offsets) == []


def test_greedy_agrees_with_the_independent_checker():
    rng = random.Random(0)
    for _ in range(40):
        buffers = _random_buffers(rng, rng.randint(2, 25), 12)
        steps = [(b.id, b.lower, b.upper - 1, b.size) for b in buffers]
        assert greedy_by_size(buffers).peak(buffers) == greedy_peak(steps)
        assert lower_bound(buffers) == live_peak(steps)


def test_search_matches_cpsat_optimum_on_random_instances():
    """Sound and complete: solves at CP-SAT's proven optimum, proves one byte less infeasible."""
    rng = random.Random(1)
    for _ in range(25):
        buffers = _random_buffers(rng, rng.randint(3, 14), 10)
        exact = solve_cpsat(buffers, 10.0, lower=lower_bound(buffers))
        assert exact.status == "optimal" and exact.objective is not None
        solved = search_capacity(buffers, exact.objective, 10.0)
        assert solved.status == "solved" and solved.offsets is not None
        assert find_conflicts(buffers, solved.offsets, exact.objective) == []
        assert search_capacity(buffers, exact.objective - 1, 10.0).status == "infeasible"


def test_search_proves_infeasibility_above_the_lower_bound():
    """With alignments the optimum often exceeds the live-bytes bound: the exhaustive search
    must prove every capacity below CP-SAT's optimum infeasible, and solve at it."""
    rng = random.Random(2)
    above = 0
    for _ in range(25):
        buffers = _random_buffers(rng, rng.randint(3, 10), 8, alignments=(1, 2, 4, 8))
        exact = solve_cpsat(buffers, 10.0, lower=lower_bound(buffers))
        assert exact.status == "optimal" and exact.objective is not None
        above += exact.objective > lower_bound(buffers)
        solved = search_capacity(buffers, exact.objective, 10.0)
        assert solved.status == "solved" and solved.offsets is not None
        assert find_conflicts(buffers, solved.offsets, exact.objective) == []
        assert search_capacity(buffers, exact.objective - 1, 10.0).status == "infeasible"
    assert above >= 5  # the proofs above were not all the trivial lower-bound ones
    pair = [Buffer("p", 0, 2, 1, 2), Buffer("q", 0, 2, 1, 2)]
    with pytest.raises(InfeasibleError, match="exhaustive canonical search"):
        fit_capacity(pair, 2, 5.0, method="search")


def test_search_beats_greedy_and_honours_alignment():
    result = search_capacity(GREEDY_TRAP, 7, 5.0)
    assert result.status == "solved" and find_conflicts(GREEDY_TRAP, result.offsets, 7) == []
    aligned = [Buffer("p", 0, 2, 40, 64), Buffer("q", 1, 3, 10, 64), Buffer("r", 0, 3, 24)]
    fit = search_capacity(aligned, 128, 5.0)
    assert fit.status == "solved" and find_conflicts(aligned, fit.offsets, 128) == []
    assert all(o % b.alignment == 0 for o, b in zip(fit.offsets, aligned, strict=True))


def test_minimize_reaches_the_bound_and_says_so():
    result = minimize_arena(GREEDY_TRAP, 5.0)
    assert (result.size, result.lower_bound, result.greedy_by_size) == (7, 7, 10)
    assert result.optimal and result.improved and result.method == "minimalloc-search"
    greedy_only = minimize_arena(GREEDY_TRAP, 5.0, method="greedy")
    assert greedy_only.size == 10 and not greedy_only.optimal
    cpsat = minimize_arena(GREEDY_TRAP, 5.0, method="cp-sat")
    assert cpsat.size == 7 and cpsat.optimal and cpsat.method == "cp-sat"


def test_fit_capacity_errors():
    with pytest.raises(InfeasibleError, match="lower bound"):
        fit_capacity(GREEDY_TRAP, 6, 5.0)
    with pytest.raises(InfeasibleError, match="alone needs 4 bytes"):
        fit_capacity([Buffer("a", 0, 1, 4)], 3, 5.0)
    with pytest.raises(UserError, match="lower=2 >= upper=2"):
        fit_capacity([Buffer("a", 2, 2, 4)], 8, 5.0)
    with pytest.raises(UserError, match="does not search"):
        fit_capacity(GREEDY_TRAP, 7, 5.0, method="greedy")
    assert fit_capacity(GREEDY_TRAP, 7, 5.0, method="cp-sat").peak == 7
    assert fit_capacity(GREEDY_TRAP, 10, 5.0, method="greedy").method == "greedy-by-size"


@pytest.mark.skipif(not MINIMALLOC.is_dir(), reason="MiniMalloc instances not present")
def test_time_limit_without_an_answer_raises():
    buffers = parse_csv((MINIMALLOC / "B.1048576.csv").read_text()).buffers
    with pytest.raises(TimeLimitError, match="time limit"):
        fit_capacity(buffers, 1 << 20, 0.3, method="search")
    # Minimizing never fails: out of time it returns the best arena, greedy at worst.
    best = minimize_arena(buffers, 0.3, method="search")
    assert best.timed_out and best.size <= best.greedy_by_size and not best.optimal


@pytest.mark.parametrize(("text", "message"), [
    ("id,lower,size\n1,0,4\n", "lacks the column(s) upper"),
    ("id,lower,upper,size\n1,0,4,-3\n", "negative size"),
    ("id,lower,upper,size\n1,4,4,3\n", "lower=4 >= upper=4"),
    ("id,lower,upper,size\n1,0,4,3\n1,1,2,3\n", "appears twice"),
    ("id,lower,upper,size\n1,0,four,3\n", "line 2: upper 'four' is not an integer"),
    ("id,lower,upper,size,gaps\n1,0,4,3,\n", "unsupported column(s) 'gaps'"),
    ("id,lower,upper,size\n1,0,4\n", "3 fields for 4 columns"),
    ("\n", "is empty"),
])
def test_bad_csv_is_a_user_error(text, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_csv(text)


def test_csv_round_trip_replaces_an_offset_column():
    problem = parse_csv(README_EXAMPLE)
    assert [b.size for b in problem.buffers] == [4] * 5 and problem.buffers[4].upper == 21
    solved = format_solution(problem, [8, 8, 4, 4, 0])
    assert solved.splitlines()[0] == "id,lower,upper,size,offset"
    again = parse_csv(solved)
    assert again.header == problem.header and again.rows == problem.rows
    assert format_solution(again, [0] * 5).splitlines()[1] == "b1,0,3,4,0"


def test_cli_solve_exit_codes(tmp_path):
    problem = tmp_path / "p.csv"
    problem.write_text(README_EXAMPLE)
    out = tmp_path / "s.csv"
    result = run_mapper("arena", "solve", str(problem), "--capacity", "12", "-o", str(out),
                        "--json")
    assert result.code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["peak"] <= 12 and summary["lower_bound"] == 12
    rows = out.read_text().splitlines()
    assert rows[0] == "id,lower,upper,size,offset" and len(rows) == 6
    solved = parse_csv(out.read_text())
    offsets = [int(row[-1]) for row in [line.split(",") for line in rows[1:]]]
    assert find_conflicts(solved.buffers, offsets, 12) == []
    # One byte short of the peak: proven infeasible (3), and nothing written.
    missing = tmp_path / "none.csv"
    tight = run_mapper("arena", "solve", str(problem), "--capacity", "11", "-o", str(missing))
    assert tight.code == 3 and "12 bytes are live" in tight.stderr and not missing.exists()
    trap = tmp_path / "trap.csv"
    trap.write_text("id,lower,upper,size\n" + "".join(
        f"{b.id},{b.lower},{b.upper},{b.size}\n" for b in GREEDY_TRAP))
    minimized = run_mapper("arena", "solve", str(trap), "-o", str(out))
    assert minimized.code == 0 and "peak 7 (proven optimal)" in minimized.stdout
    bad = tmp_path / "bad.csv"
    bad.write_text("id,lower,upper\n1,0,4\n")
    invalid = run_mapper("arena", "solve", str(bad), "--capacity", "8", "-o", str(out))
    assert invalid.code == 2 and "size" in invalid.stderr and "Traceback" not in invalid.stderr


@pytest.mark.skipif(not MINIMALLOC.is_dir(), reason="MiniMalloc instances not present")
def test_cli_minimalloc_instance_and_time_limit(tmp_path):
    out = tmp_path / "k.csv"
    solved = run_mapper("arena", "solve", str(MINIMALLOC / "K.1048576.csv"), "--capacity",
                        "1048576", "-o", str(out), "--time-limit", "60")
    assert solved.code == 0, solved.stderr
    first = out.read_bytes()
    assert run_mapper("arena", "solve", str(MINIMALLOC / "K.1048576.csv"), "--capacity",
                      "1MiB", "-o", str(out)).code == 0
    assert out.read_bytes() == first  # same input, same offsets
    late = tmp_path / "late.csv"
    timeout = run_mapper("arena", "solve", str(MINIMALLOC / "B.1048576.csv"), "--capacity",
                         "1048576", "-o", str(late), "--time-limit", "0.3", "--method",
                         "search")
    assert timeout.code == 5 and not late.exists()


def test_arena_pass_in_a_compile(tmp_path):
    source = onnx_builders.save(tiny_model(), tmp_path / "tiny.onnx")
    result = compile_model(source, "a100", tmp_path / "out",
                           CompileOptions(passes=("arena", "estimate")))
    plan = result.plan
    arena = plan["arena"]
    # The same graph as tests/test_verify_plan.py: live bytes peak at 400.
    assert (arena["size"], arena["lower_bound"], arena["greedy_by_size"]) == (400, 400, 400)
    assert [b["tensor"] for b in arena["buffers"]] == ["a", "b", "c", "y"]
    record = next(p for p in plan["passes"] if p["name"] == "arena")
    assert record["status"] == "ok" and record["solver"]["status"] == "OPTIMAL"
    assert record["solver"]["objective"] == 400 and record["solver"]["bound"] == 400
    assert plan["estimate"]["peak_device_bytes"] >= arena["size"]
    assert_output_valid(tmp_path / "out")
    assert "Activation arena" in (tmp_path / "out" / "report.html").read_text()
    greedy = compile_model(source, "a100", tmp_path / "greedy", CompileOptions(
        passes=("arena",), arena=ArenaConfig(method="greedy", time_limit_s=1.0)))
    assert greedy.plan["arena"]["size"] == 400
