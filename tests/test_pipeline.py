"""The pass manager: selection, skipping, ordering checks and error wrapping."""

from __future__ import annotations

import pytest

from mapper.errors import InfeasibleError, UserError
from mapper.graph import GraphView
from mapper.hwmodels.loader import load_hardware
from mapper.loader import load_model
from mapper.options import CompileOptions
from mapper.pipeline import (
    InternalError,
    Pass,
    PassContext,
    PassResult,
    run_pipeline,
    select_passes,
)
from tests import onnx_builders as build


class Recorder(Pass):
    """Writes the names of the passes that ran before it into its own section."""

    name = "recorder"
    description = "test pass"
    writes = ("estimate",)

    def run(self, context: PassContext) -> PassResult:
        return PassResult(sections={"estimate": {"seen": sorted(context.plan)}})


class Reverser(Pass):
    """Returns the model order reversed: never topological for a chain."""

    name = "reverser"
    description = "test pass returning an invalid order"

    def run(self, context: PassContext) -> PassResult:
        return PassResult(order=tuple(reversed(context.order)))


class Infeasible(Pass):
    name = "infeasible"
    description = "test pass that proves infeasibility"

    def run(self, context: PassContext) -> PassResult:
        raise InfeasibleError("operator x needs 5 bytes, 4 fit")


class Crashing(Pass):
    name = "crashing"
    description = "test pass with a bug"

    def run(self, context: PassContext) -> PassResult:
        raise ZeroDivisionError("division by zero")


class Lossy(Pass):
    name = "gqsa"
    description = "a lossy test pass"
    lossy = True

    def run(self, context: PassContext) -> PassResult:
        return PassResult()


class NotApplicable(Pass):
    name = "moe"
    description = "a pass that does not apply"

    def skip_reason(self, context: PassContext) -> str | None:
        return "no MoE layers found"

    def run(self, context: PassContext) -> PassResult:
        raise AssertionError("must not run")


@pytest.fixture
def context(tmp_path) -> PassContext:
    loaded = load_model(build.save(build.legacy_ir3_cnn(), tmp_path / "m.onnx"))
    view = GraphView.from_model(loaded.model)
    return PassContext(model=loaded.model, view=view, hardware=load_hardware("a100"),
                       options=CompileOptions(), order=view.model_order)


def test_lossy_passes_only_on_request_and_unknown_names_rejected():
    pipeline = [Lossy(), Recorder()]
    assert [p.name for p in select_passes(pipeline, CompileOptions())] == ["recorder"]
    gqsa = CompileOptions(compression={"method": "gqsa"})
    assert [p.name for p in select_passes(pipeline, gqsa)] == ["gqsa", "recorder"]
    assert select_passes(pipeline, CompileOptions(skip=("recorder",))) == []
    assert [p.name for p in select_passes(pipeline, CompileOptions(passes=("gqsa",)))] == \
        ["gqsa"]
    with pytest.raises(UserError, match="unknown pass 'tiling'"):
        select_passes(pipeline, CompileOptions(passes=("tiling",)))
    # A lossy pass this pipeline lacks is an error, not a compile without it.
    with pytest.raises(UserError, match="'lqlora' is not available"):
        select_passes(pipeline, CompileOptions(compression={"method": "lqlora"}))


class Configured(Pass):
    name = "moe"
    description = "a pass with settings"
    config_field = "moe"

    def run(self, context: PassContext) -> PassResult:
        return PassResult()


def test_a_setting_of_a_pass_that_does_not_run_names_the_pass():
    pipeline = [Lossy(), Configured(), Recorder()]
    with pytest.raises(UserError, match=r"--bits belongs to the compression passes \(gqsa\)"):
        select_passes(pipeline, CompileOptions(compression={"bits": 4}))
    with pytest.raises(UserError, match="--devices belongs to the moe pass"):
        select_passes(pipeline, CompileOptions(moe={"devices": 2}, skip=("moe",)))
    # Set while the pass runs, or left at defaults while it does not: fine.
    assert len(select_passes(pipeline, CompileOptions(moe={"devices": 2}))) == 2
    assert len(select_passes(pipeline, CompileOptions(skip=("moe",)))) == 1


def test_skipped_pass_is_recorded_with_its_reason(context):
    outcome = run_pipeline([NotApplicable(), Recorder()], context)
    assert [(r.name, r.status) for r in outcome.records] == [("moe", "skipped"),
                                                             ("recorder", "ok")]
    assert outcome.records[0].notes == ("no MoE layers found",)


def test_user_facing_errors_keep_their_code_and_name_the_passes_before(context):
    with pytest.raises(InfeasibleError, match=r"pass infeasible \(after recorder\)"):
        run_pipeline([Recorder(), Infeasible()], context)


def test_bugs_become_internal_errors_with_context(context):
    with pytest.raises(InternalError, match="internal error in pass crashing after recorder"):
        run_pipeline([Recorder(), Crashing()], context)


def test_an_invalid_order_is_caught_by_the_base_class(context):
    with pytest.raises(InternalError, match="not topological"):
        run_pipeline([Reverser()], context)
