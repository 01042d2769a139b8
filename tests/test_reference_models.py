"""Every reference model compiles for every built-in hardware model and keeps its numerics."""

from __future__ import annotations

import hashlib
import json

import pytest

from mapper.driver import compile_model
from mapper.hwmodels.loader import builtin_names
from mapper.options import CompileOptions
from mapper.verify import verify_models
from models import REFERENCE_MODELS, build
from models._registry import get_spec
from tests.plan_checks import assert_output_valid

# A 135M-parameter LLM takes about a minute per compile here; it runs on one hardware model
# of each kind (datacenter GPU, TPU, edge NPU) rather than all of them.
LARGE_MODELS = {"smollm2_135m": ("a100-80gb", "tpu-v4", "edge-npu")}
# Every solver gets 5 s: a pass that runs out falls back to its heuristic, and that plan must
# be as valid as a proven one (the full 30 s budgets are measured in benchmarks/).
TIME_LIMIT_S = 5.0


@pytest.mark.slow
@pytest.mark.parametrize("name", REFERENCE_MODELS)
def test_reference_model_compiles_everywhere_and_verifies(tmp_path, name):
    path = build(name)
    spec = get_spec(name)
    options = CompileOptions(dims={dim: value.example for dim, value in spec.dynamic_dims.items()},
                             time_limit_s=TIME_LIMIT_S)
    verified: set[str] = set()
    for hardware in LARGE_MODELS.get(name, builtin_names()):
        out = tmp_path / hardware
        result = compile_model(path, hardware, out, options)
        plan = json.loads((out / "plan.json").read_text())
        assert plan["estimate"]["latency_s"] > 0, hardware
        assert len(plan["schedule"]["order"]) == result.summary["nodes"]
        assert_output_valid(out)  # every emitted plan passes `mapper verify-plan`
        digest = hashlib.sha256((out / "model.onnx").read_bytes()).hexdigest()
        if digest in verified:
            continue  # byte-identical to a model already verified
        check = verify_models(path, out / "model.onnx", dims=dict(options.dims))
        assert check.ok, (hardware, [(o.name, o.max_abs, o.cosine) for o in check.outputs])
        verified.add(digest)
