"""Small CP-SAT helpers shared by the GPU and accelerator tile models.

Both models express their cost as exact integer arithmetic (products, floor/ceil divisions,
max/min and table look-ups on small index variables), so the CP-SAT optimum can be compared
bit for bit with an exhaustive enumeration of the same formulas (`enumerate.py`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from ortools.sat.python import cp_model

# CP-SAT status names as plan.json records them.
STATUS_NAMES = {cp_model.OPTIMAL: "OPTIMAL", cp_model.FEASIBLE: "FEASIBLE",
                cp_model.INFEASIBLE: "INFEASIBLE", cp_model.MODEL_INVALID: "MODEL_INVALID",
                cp_model.UNKNOWN: "UNKNOWN"}


@dataclass(frozen=True)
class SolveLimits:
    """Budget and reproducibility settings of one CP-SAT solve."""

    seed: int = 0
    wall_s: float = 5.0
    deterministic_s: float = 5.0


@dataclass(frozen=True)
class SolveOutcome:
    """What one CP-SAT solve returned: the chosen values (None if none), status and timing."""

    values: dict[str, int] | None
    status: str
    objective: int | None
    bound: int | None
    wall_s: float
    deterministic_s: float = 0.0


class Builder:
    """A CpModel with the few integer idioms the tile models need."""

    def __init__(self) -> None:
        self.model = cp_model.CpModel()
        self._count = 0

    def _name(self, base: str) -> str:
        self._count += 1
        return f"{base}_{self._count}"

    def choice(self, name: str, values: Sequence[int]) -> cp_model.IntVar:
        """An integer variable restricted to `values`."""
        return self.model.new_int_var_from_domain(
            cp_model.Domain.from_values(sorted(set(int(v) for v in values))), name)

    def var(self, lo: int, hi: int, name: str = "v") -> cp_model.IntVar:
        """A fresh integer variable in [lo, hi]."""
        return self.model.new_int_var(int(lo), int(max(lo, hi)), self._name(name))

    def bool(self, name: str = "b") -> cp_model.IntVar:
        """A fresh Boolean variable."""
        return self.model.new_bool_var(self._name(name))

    def table(self, index: cp_model.LinearExprT, offset: int, values: Sequence[int],
              name: str = "t") -> cp_model.IntVar:
        """A variable equal to `values[index - offset]` (index must stay in range)."""
        ints = [int(v) for v in values]
        target = self.var(min(ints), max(ints), name)
        if len(set(ints)) == 1:
            self.model.add(target == ints[0])
            return target
        idx = self.var(0, len(ints) - 1, f"{name}_idx")
        self.model.add(idx == index - offset)
        self.model.add_element(idx, ints, target)
        return target

    def product(self, factors: Sequence[cp_model.LinearExprT], hi: int, name: str = "p",
                lo: int = 0) -> cp_model.IntVar:
        """A variable equal to the product of `factors` (all non-negative), in [lo, hi]."""
        target = self.var(lo, hi, name)
        self.model.add_multiplication_equality(target, list(factors))
        return target

    def floordiv(self, num: cp_model.LinearExprT, den: cp_model.LinearExprT, hi: int,
                 name: str = "q") -> cp_model.IntVar:
        """A variable equal to num // den (num >= 0, den > 0)."""
        target = self.var(0, hi, name)
        self.model.add_division_equality(target, num, den)
        return target

    def ceildiv(self, num: cp_model.LinearExprT, den: cp_model.LinearExprT | int, hi: int,
                name: str = "c") -> cp_model.IntVar:
        """A variable equal to ceil(num / den) (num >= 0, den > 0)."""
        return self.floordiv(num + den - 1, den, hi, name)

    def maximum(self, exprs: Sequence[cp_model.LinearExprT], lo: int, hi: int,
                name: str = "mx") -> cp_model.IntVar:
        """A variable equal to the largest of `exprs`."""
        target = self.var(lo, hi, name)
        self.model.add_max_equality(target, list(exprs))
        return target

    def minimum(self, exprs: Sequence[cp_model.LinearExprT], lo: int, hi: int,
                name: str = "mn") -> cp_model.IntVar:
        """A variable equal to the smallest of `exprs`."""
        target = self.var(lo, hi, name)
        self.model.add_min_equality(target, list(exprs))
        return target

    def solve(self, objectives: Sequence[cp_model.LinearExprT],
              decisions: dict[str, cp_model.IntVar], hint: dict[str, int] | None,
              limits: SolveLimits) -> SolveOutcome:
        """Minimize `objectives` lexicographically: each later one among the optima of the
        earlier ones. Deterministic (one worker, fixed seed), hinted, time-capped; the
        status, objective and bound reported are those of the first (primary) objective."""
        if hint:
            for key, var in decisions.items():
                if key in hint:
                    self.model.add_hint(var, int(hint[key]))
        started = time.perf_counter()
        first: tuple[str, int, int] | None = None
        work = 0.0
        values: dict[str, int] | None = None
        for level, objective in enumerate(objectives):
            self.model.minimize(objective)
            solver = cp_model.CpSolver()
            params = solver.parameters
            params.random_seed = int(limits.seed)
            params.num_workers = 1
            spent = time.perf_counter() - started
            params.max_time_in_seconds = max(0.01, float(limits.wall_s) - spent)
            params.max_deterministic_time = float(limits.deterministic_s) / len(objectives)
            params.log_search_progress = False
            # Probing in presolve costs more than the whole search on these small models.
            params.cp_model_probing_level = 0
            code = solver.solve(self.model)
            work += solver.deterministic_time
            status = STATUS_NAMES.get(code, str(code))
            if code not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
                if level == 0:
                    return SolveOutcome(None, status, None, None, time.perf_counter() - started,
                                        work)
                break  # keep the earlier level's answer
            values = {key: int(solver.value(var)) for key, var in decisions.items()}
            best = round(solver.objective_value)
            if level == 0:
                first = (status, best, round(solver.best_objective_bound))
            if code != cp_model.OPTIMAL:
                break  # an unproven level cannot fix the next one's frame
            # The next level keeps this optimum and starts from this solution.
            self.model.add(objective == best)
            self.model.clear_hints()
            for key, var in decisions.items():
                self.model.add_hint(var, values[key])
        assert first is not None and values is not None
        return SolveOutcome(values, first[0], first[1], first[2], time.perf_counter() - started,
                            work)
