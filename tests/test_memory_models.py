"""The memory pass on every reference model and every corpus model (control flow, zero-size
and int64 shape tensors included): each plan is checked by the independent checker."""

from __future__ import annotations

import pytest

import models
from mapper.errors import MapperError
from mapper.graph import GraphView
from mapper.hwmodels.loader import load_hardware, set_managed_capacity
from mapper.loader import ShapeSpec, load_model
from mapper.options import CompileOptions, MemoryConfig
from mapper.passes.memory import MemoryPass
from mapper.pipeline import PassContext
from models import corpus
from tests.test_memory_checker import check_memory_plan

# SmolLM2's memory plan is checked by the reference-model compile test; solving it twice more
# here would add four minutes for no new operator kinds.
MODELS = [*(n for n in models.REFERENCE_MODELS if n != "smollm2_135m"), *sorted(corpus.CORPUS)]


def _load(name: str):
    if name in models.REFERENCE_MODELS:
        dims = {"seq": 64} if name == "gpt_decoder" else {}
        return load_model(models.build(name), ShapeSpec({}, dims), None)
    entry = corpus.CORPUS[name]
    # A model whose shapes hang on an input's value (Silero's sample rate) is probed with it.
    probe = corpus.sample_inputs(name) if entry.input_values else None
    return load_model(corpus.fetch(name), ShapeSpec(dict(entry.input_shapes or {}), {}), probe)


def largest_operator(view: GraphView) -> int:
    """COSMA's M_R: the largest inputs + outputs of one operator."""
    return max((sum(view.tensors[t].size for t in {*n.inputs, *n.outputs})
                for n in view.nodes.values()), default=1)


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_memory_plan_is_valid_on_every_model(name):
    try:
        loaded = _load(name)
    except (MapperError, corpus.CorpusUnavailableError) as error:
        pytest.skip(f"{name} does not load here: {error}"[:200])
    view = GraphView.from_model(loaded.model)
    for capacity in (512 * 1024, max(64, largest_operator(view))):
        hardware = set_managed_capacity(load_hardware("edge-npu"), capacity)
        options = CompileOptions(time_limit_s=10, seed=0,
                                 memory=MemoryConfig(order_evaluations=4))
        context = PassContext(model=loaded.model, view=view, hardware=hardware,
                              options=options, order=view.model_order)
        result = MemoryPass()(context)
        plan = {"schedule": {"order": list(result.order or view.model_order)},
                "memory": result.sections["memory"]}
        got = check_memory_plan(view, plan)
        traffic = plan["memory"]["traffic"]
        assert got["total"] <= traffic["baselines"]["belady"]
        assert result.solver is not None and result.solver.bound is not None
        assert result.solver.bound <= got["total"]
