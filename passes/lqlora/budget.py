"""The budget ILP: one option per matrix, least summed error, total stored bits within budget.

    minimize  Σ_m Σ_o e[m][o] · x[m][o]
    s.t.      Σ_o x[m][o] = 1                      for every matrix m
              Σ_m Σ_o bits[m][o] · x[m][o] ≤ B

Solved with CP-SAT (one worker, fixed seed: the same input gives the same plan). Errors are
scaled to integers; the hint is the best uniform assignment that fits, so CP-SAT starts from
the baseline it has to beat and a longer time limit can only improve on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# Errors are scaled so that the largest summed error is this many units: far above what
# separates two options, far below CP-SAT's int64 range.
_SCALE_TARGET = 1e12


@dataclass(frozen=True)
class Assignment:
    """The ILP's answer: one option index per matrix, and what the solver proved."""

    picks: tuple[int, ...]
    objective: float  # summed error of the picks, in the errors' own units
    bound: float  # CP-SAT's lower bound on the objective, same units
    status: str  # OPTIMAL or FEASIBLE
    bits: int  # total stored bits of the picks

    def to_dict(self) -> dict[str, object]:
        """The plan's `lqlora.ilp`."""
        return {"status": self.status, "objective": self.objective, "bound": self.bound,
                "total_bits": self.bits}


def solve(bits: Sequence[Sequence[int]], errors: Sequence[Sequence[float]], budget: int,
          time_limit_s: float, seed: int, hint: Sequence[int] | None = None) -> Assignment:
    """The ILP above; raises ValueError when even the cheapest options exceed `budget`."""
    from ortools.sat.python import cp_model

    cheapest = sum(min(row) for row in bits)
    if cheapest > budget:
        raise ValueError(f"the cheapest options need {cheapest} bits, the budget is {budget}")
    largest = sum(max(row) for row in errors) or 1.0
    scale = _SCALE_TARGET / largest
    model = cp_model.CpModel()
    choice = [[model.new_bool_var(f"x{m}_{o}") for o in range(len(row))]
              for m, row in enumerate(bits)]
    for row in choice:
        model.add_exactly_one(row)
    model.add(sum(b * x for brow, xrow in zip(bits, choice, strict=True)
                  for b, x in zip(brow, xrow, strict=True)) <= budget)
    model.minimize(sum(round(e * scale) * x for erow, xrow in zip(errors, choice, strict=True)
                       for e, x in zip(erow, xrow, strict=True)))
    if hint is not None:
        for m, pick in enumerate(hint):
            for o, x in enumerate(choice[m]):
                model.add_hint(x, o == pick)
    solver = cp_model.CpSolver()
    params = solver.parameters
    params.num_workers = 1
    params.random_seed = seed
    params.max_time_in_seconds = time_limit_s
    status = solver.solve(model)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        # A hint that fits is always a solution; without one, fall back to the cheapest.
        picks = tuple(hint) if hint is not None else tuple(
            min(range(len(row)), key=row.__getitem__) for row in bits)
        objective = sum(errors[m][o] for m, o in enumerate(picks))
        return Assignment(picks, objective, 0.0, "FEASIBLE",
                          sum(bits[m][o] for m, o in enumerate(picks)))
    picks = tuple(next(o for o, x in enumerate(row) if solver.value(x)) for row in choice)
    objective = sum(errors[m][o] for m, o in enumerate(picks))
    if hint is not None:
        hinted = sum(errors[m][o] for m, o in enumerate(hint))
        if hinted < objective:  # never return worse than the baseline it started from
            picks, objective = tuple(hint), hinted
    return Assignment(picks=picks, objective=objective,
                      bound=min(solver.best_objective_bound / scale, objective),
                      status="OPTIMAL" if status == cp_model.OPTIMAL else "FEASIBLE",
                      bits=sum(bits[m][o] for m, o in enumerate(picks)))
