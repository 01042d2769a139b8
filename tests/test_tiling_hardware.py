"""Tiling pass on the reference models for every built-in hardware model (in the models'
fp32 and tiled as fp16): every emitted config passes the independent constraint checker,
and every GEMM-shaped node gets one."""

from __future__ import annotations

import pytest

import models
from mapper.graph import GraphView
from mapper.hwmodels.loader import builtin_catalog
from mapper.loader import ShapeSpec, load_model
from mapper.options import CompileOptions
from mapper.passes.tiling import TilingPass
from mapper.passes.tiling.constraints import check_record
from mapper.passes.tiling.problems import extract_problems
from mapper.pipeline import PassContext

_DIMS = {"gpt_decoder": {"seq": 64}}
# CPUs have no tiles to choose (the pass skips them: test_cpus_are_skipped).
_HARDWARE = [hw for hw in builtin_catalog() if hw.kind != "cpu"]


@pytest.fixture(scope="module")
def loaded():
    views = {}
    for name in ("resnet_small", "gpt_decoder", "moe_transformer", "minilm_l6", "resnet50"):
        model = load_model(models.build(name), ShapeSpec({}, _DIMS.get(name, {}))).model
        views[name] = (model, GraphView.from_model(model))
    return views


def _run(loaded, name, hw, precision=None):
    model, view = loaded[name]
    if precision is not None:
        view = GraphView.from_model(model, precision)
    options = CompileOptions(dims=_DIMS.get(name, {}), precision=precision or "model")
    context = PassContext(model=model, view=view, hardware=hw, options=options,
                          order=view.model_order)
    return model, view, TilingPass()(context)


@pytest.mark.slow
@pytest.mark.parametrize("hw", _HARDWARE, ids=lambda hw: hw.name)
def test_every_config_satisfies_every_constraint(loaded, hw):
    names = ["resnet_small", "gpt_decoder", "moe_transformer", "minilm_l6"]
    if hw.name in ("a100-80gb", "h100", "tpu-v5e", "edge-npu", "mi300x"):
        names.append("resnet50")
    runs = [(name, None) for name in names] + [("resnet_small", "fp16"), ("minilm_l6", "fp16")]
    for name, precision in runs:
        model, view, result = _run(loaded, name, hw, precision)
        kernels = result.sections["kernels"]
        sites, _ = extract_problems(model, view, view.model_order)
        assert [k["node"] for k in kernels] == [s.node for s in sites], (name, result.notes)
        assert result.status == "ok" and result.solver.status == "OPTIMAL"
        for record in kernels:
            assert check_record(record, hw) == [], (name, record)


@pytest.mark.parametrize("name", ["epyc-9654", "graviton3"])
def test_cpus_are_skipped(loaded, name):
    model, view = loaded["resnet_small"]
    hw = next(hw for hw in builtin_catalog() if hw.name == name)
    context = PassContext(model=model, view=view, hardware=hw, options=CompileOptions(),
                          order=view.model_order)
    reason = TilingPass().skip_reason(context)
    assert reason is not None and "CPU" in reason
