"""The pass manager: one readable pipeline list, typed contexts and results, timing and status.

A pass is `Pass.__call__(context) -> PassResult`: the base class runs `requires` before and
`ensures` after `run`, so every pass gets the same checks (onnx-ir / onnxscript style).
Errors are re-raised with the passes that ran before them, keeping their exit codes.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Literal, Protocol

from onnx import ModelProto

from mapper.errors import MapperError, UserError
from mapper.facts import Facts
from mapper.graph import GraphView
from mapper.hwmodels.schema import Hardware
from mapper.options import CompileOptions

log = logging.getLogger(__name__)

PassStatus = Literal["ok", "fallback", "skipped", "failed"]


@dataclass(frozen=True)
class SolverRecord:
    """What a solver said: CONTRACTS.md section 2, `passes[].solver`."""

    name: str
    status: str
    objective: float | None
    bound: float | None
    seed: int
    # What the status and bound are proven for ("fixed order", "per-problem", ...).
    scope: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The plan.json form."""
        return {"name": self.name, "status": self.status, "scope": self.scope,
                "objective": self.objective, "bound": self.bound, "seed": self.seed}


@dataclass(frozen=True)
class PassContext:
    """Everything a pass may read: the current model and its view, hardware, options, plan."""

    model: ModelProto
    view: GraphView
    hardware: Hardware
    options: CompileOptions
    order: tuple[str, ...]
    plan: Mapping[str, Any] = field(default_factory=dict)
    facts: Facts = field(default_factory=Facts)


@dataclass(frozen=True)
class PassResult:
    """A pass's decisions: plan sections it fills (for users), typed facts (for later
    passes), and optionally a new model or order."""

    status: PassStatus = "ok"
    sections: Mapping[str, Any] = field(default_factory=dict)
    model: ModelProto | None = None
    order: tuple[str, ...] | None = None
    solver: SolverRecord | None = None
    notes: tuple[str, ...] = ()
    facts: Facts = field(default_factory=Facts)
    # Files for the output directory (name -> bytes), e.g. weights.gqsa.safetensors.
    artifacts: Mapping[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class PassRecord:
    """One line of plan.json `passes`."""

    name: str
    status: PassStatus
    seconds: float
    solver: SolverRecord | None
    notes: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """The plan.json form."""
        return {"name": self.name, "status": self.status, "seconds": round(self.seconds, 4),
                "solver": self.solver.to_dict() if self.solver else None,
                "notes": list(self.notes)}


class Pass(ABC):
    """Base of every pass; subclasses set `name`, `description` and implement `run`."""

    name: ClassVar[str]
    description: ClassVar[str]
    lossy: ClassVar[bool] = False
    # Plan sections this pass is the only writer of.
    writes: ClassVar[tuple[str, ...]] = ()
    # Facts (mapper.facts.Facts fields) this pass establishes for later passes.
    provides: ClassVar[tuple[str, ...]] = ()
    # The CompileOptions field holding this pass's settings: setting any of them while the
    # pass does not run is a user error that names the pass.
    config_field: ClassVar[str | None] = None

    def skip_reason(self, context: PassContext) -> str | None:
        """Why the pass does not apply to this model/hardware (None: it applies)."""
        return None

    def requires(self, context: PassContext) -> None:
        """Preconditions; the default demands a schedule that is a topological order."""
        if not context.view.is_topological(context.order):
            raise AssertionError(f"pass {self.name}: the incoming order is not topological")

    @abstractmethod
    def run(self, context: PassContext) -> PassResult:
        """Decide; return the plan sections, and a new model/order if the pass rewrites."""

    def ensures(self, context: PassContext, result: PassResult) -> None:
        """Postconditions; the default checks sections and any new order."""
        unexpected = set(result.sections) - set(self.writes)
        if unexpected:
            raise AssertionError(f"pass {self.name} wrote sections it does not own: {unexpected}")
        foreign = set(result.facts.given()) - set(self.provides)
        if foreign:
            raise AssertionError(f"pass {self.name} gave facts it does not provide: {foreign}")
        if result.model is not None:
            check_rewritten_model(self.name, result.model)
        if result.order is not None and result.model is None \
                and not context.view.is_topological(result.order):
            raise AssertionError(f"pass {self.name} returned an order that is not topological")

    def __call__(self, context: PassContext) -> PassResult:
        """Run with the base class's checks around it."""
        self.requires(context)
        result = self.run(context)
        self.ensures(context, result)
        return result


class InternalError(MapperError):
    """A bug inside mapper (exit 1); the message asks for a report."""

    exit_code = 1


def check_rewritten_model(pass_name: str, model: ModelProto) -> None:
    """What every model a pass returns must be: unique non-empty node names, a static type
    and shape for every tensor a node produces, and a graph the ONNX checker accepts."""
    import onnx

    names = [node.name for node in model.graph.node]
    if any(not name for name in names) or len(set(names)) != len(names):
        raise AssertionError(f"pass {pass_name} returned a model whose node names are not "
                             "unique and non-empty")
    # Maps and sequences (ai.onnx.ml's ZipMap) have no shape to be static: their declared
    # type is all there is.
    typed = {info.name for info in [*model.graph.value_info, *model.graph.output]
             if info.type.WhichOneof("value") not in (None, "tensor_type")
             or (info.type.tensor_type.HasField("shape")
                 and all(d.HasField("dim_value") for d in info.type.tensor_type.shape.dim))}
    untyped = [out for node in model.graph.node for out in node.output
               if out and out not in typed]
    if untyped:
        raise AssertionError(f"pass {pass_name} returned a model without static shapes for "
                             f"{', '.join(untyped[:5])}")
    if sum(init.ByteSize() for init in model.graph.initializer) < 2**31 - 2**28:
        try:
            onnx.checker.check_model(model)
        except onnx.checker.ValidationError as error:
            raise AssertionError(f"pass {pass_name} returned a model the ONNX checker rejects: "
                                 f"{str(error).splitlines()[0]}") from error


def select_passes(pipeline: Sequence[Pass], options: CompileOptions) -> list[Pass]:
    """The passes to run: `--passes` picks (in pipeline order), `--skip` drops; lossy opt in."""
    known = [p.name for p in pipeline]
    for name in [*(options.passes or ()), *options.skip]:
        if name not in known:
            raise UserError(f"unknown pass {name!r} in --passes/--skip; the passes are: "
                            f"{', '.join(known)}")
    if options.compress is not None and options.compress not in known:
        # Asked for a lossy pass this build does not have: never compile without it silently.
        raise UserError(f"compression pass {options.compress!r} is not available in this "
                        f"version of mapper (its passes: {', '.join(known)})")
    chosen = []
    for candidate in pipeline:
        if candidate.lossy:
            wanted = candidate.name == options.compress or candidate.name in (options.passes or ())
        elif options.passes is not None:
            wanted = candidate.name in options.passes
        else:
            wanted = True
        if wanted and candidate.name not in options.skip:
            chosen.append(candidate)
    _check_settings_of_unselected(pipeline, chosen, options)
    return chosen


def _check_settings_of_unselected(pipeline: Sequence[Pass], chosen: Sequence[Pass],
                                  options: CompileOptions) -> None:
    """A setting of a pass that will not run is a mistake the user must hear about."""
    running = {p.name for p in chosen}
    shared = sorted(set(options.compression.model_fields_set) - {"method"})
    if shared and options.compress is None:
        flags = ", ".join(options.flag_for(f"compression.{name}") for name in shared)
        lossy = ", ".join(p.name for p in pipeline if p.lossy) or "none in this build"
        raise UserError(f"{flags} belongs to the compression passes ({lossy}), and none runs: "
                        "add --compress METHOD, or remove the setting")
    for candidate in pipeline:
        field_name = candidate.config_field
        if field_name is None or candidate.name in running:
            continue
        config = getattr(options, field_name, None)
        given = sorted(getattr(config, "model_fields_set", ()) or ())
        if not given:
            continue
        flags = ", ".join(options.flag_for(f"{field_name}.{name}") for name in given)
        how = (f"add --compress {candidate.name}" if candidate.lossy
               else "drop it from --skip or add it to --passes")
        raise UserError(f"{flags} belongs to the {candidate.name} pass, which this compile "
                        f"does not run: {how}, or remove the setting")


@dataclass(frozen=True)
class PipelineOutcome:
    """What the manager hands to emit: the final model, order, plan sections and records."""

    model: ModelProto
    view: GraphView
    order: tuple[str, ...]
    sections: Mapping[str, Any]
    records: tuple[PassRecord, ...]
    facts: Facts = field(default_factory=Facts)
    artifacts: Mapping[str, bytes] = field(default_factory=dict)


class ProgressHook(Protocol):
    """Told when each pass starts and ends (mapper.progress shows it on stderr)."""

    def start(self, name: str, index: int, total: int) -> None:
        """Pass `name`, the index-th of `total`, begins."""

    def end(self, name: str) -> None:
        """Pass `name` finished (or failed)."""


def run_pipeline(pipeline: Sequence[Pass], context: PassContext,
                 progress: ProgressHook | None = None) -> PipelineOutcome:
    """Run the selected passes in pipeline order, threading model, order and plan through."""
    selected = {p.name for p in select_passes(pipeline, context.options)}
    records: list[PassRecord] = []
    sections: dict[str, Any] = dict(context.plan)
    artifacts: dict[str, bytes] = {}
    ran: list[str] = []
    for current in pipeline:
        if current.name not in selected:
            continue
        started = time.perf_counter()
        reason = current.skip_reason(context)
        if reason is not None:
            records.append(PassRecord(current.name, "skipped", time.perf_counter() - started,
                                      None, (reason,)))
            continue
        if progress is not None:
            progress.start(current.name, len(ran) + 1, len(selected))
        try:
            result = current(context)
        except MapperError as error:
            prefix = f"pass {current.name}" + (f" (after {', '.join(ran)})" if ran else "")
            raise type(error)(f"{prefix}: {error}", subject=error.subject,
                              details=error.details) from error
        except Exception as error:
            after = f" after {', '.join(ran)}" if ran else ""
            raise InternalError(
                f"internal error in pass {current.name}{after}: {type(error).__name__}: {error}. "
                "This is a bug in mapper: please report it with the model and command "
                "(rerun with --debug for the traceback)") from error
        finally:
            if progress is not None:
                progress.end(current.name)
        ran.append(current.name)
        sections.update(result.sections)
        artifacts.update(result.artifacts)
        model, view, order = context.model, context.view, context.order
        if result.model is not None:
            model = result.model
            view = GraphView.from_model(model, context.view.precision,
                                        context.view.group_sparse)
            order = result.order or view.model_order
        elif result.order is not None:
            order = result.order
        context = replace(context, model=model, view=view, order=order, plan=dict(sections),
                          facts=context.facts.merged(result.facts, current.name))
        records.append(PassRecord(current.name, result.status, time.perf_counter() - started,
                                  result.solver, result.notes))
        log.info("pass %s: %s in %.2f s", current.name, result.status, records[-1].seconds)
    return PipelineOutcome(model=context.model, view=context.view, order=context.order,
                           sections=sections, records=tuple(records), facts=context.facts,
                           artifacts=artifacts)
