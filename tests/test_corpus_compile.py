"""Real-world models this project did not produce: each compiles and keeps its numerics.

The corpus (models/corpus) covers other exporters (paddle2onnx, tf2onnx, skl2onnx, spox,
onnx-caffe2, old torch), opset 6-9 files with IR version 3, ConstantOfShape-made weights,
If/Loop/Scan with state inputs, and dynamic dims given with --input-shape.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from mapper.driver import compile_model
from mapper.options import CompileOptions
from mapper.verify import verify_models
from mapper.verify_plan import verify_plan
from models import corpus
from tests.conftest import run_mapper

# Numerics are compared at a tolerance that float32 reassociation in folded constants meets
# for deep CNNs with random weights (outputs in the hundreds).
RTOL, ATOL = 1e-3, 1e-3


# onnxruntime's own type inference rejects these files once their rank-less inputs are given
# static shapes (an LSTM in a dead If branch is inferred at rank 5): the written model keeps
# the inputs as the file declared them, and the plan says so.
INPUTS_AS_DECLARED = {"silero_vad": ["input", "state"]}


@pytest.mark.slow
@pytest.mark.parametrize("name", corpus.names())
def test_corpus_model_compiles_and_verifies(tmp_path, name):
    entry = corpus.CORPUS[name]
    path = corpus.fetch(name)
    feeds = corpus.sample_inputs(name)
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, **feeds)
    calib = None
    if entry.input_values:
        calib = tmp_path / "calib.npz"
        np.savez(calib, **{key: value[np.newaxis] for key, value in feeds.items()})
    options = CompileOptions(input_shapes=dict(entry.input_shapes or {}), calib=calib)
    out = tmp_path / "out"
    compile_model(path, "a100", out, options)
    plan = json.loads((out / "plan.json").read_text())
    assert plan["estimate"]["latency_s"] > 0
    assert plan["model"].get("inputs_as_declared", []) == INPUTS_AS_DECLARED.get(name, [])
    plan_check = verify_plan(out / "model.onnx", out / "plan.json")
    assert plan_check.ok, plan_check.violations
    if entry.ort_error:
        # onnxruntime cannot run the original (e.g. opset 6 kernels are gone): the upgraded
        # model must run, and there is nothing to compare it with.
        check = verify_models(out / "model.onnx", out / "model.onnx", inputs=inputs)
    else:
        check = verify_models(path, out / "model.onnx", inputs=inputs, rtol=RTOL, atol=ATOL)
    assert check.ok, [(o.name, o.max_abs, o.max_rel, o.cosine) for o in check.outputs]


def test_data_dependent_shapes_without_calibration_say_what_to_do(tmp_path):
    path = corpus.fetch("silero_vad")
    result = run_mapper("compile", str(path), "--hw", "a100", "-o", str(tmp_path / "out"),
                        "--input-shape", "input=1x512", "--input-shape", "state=2x1x128")
    assert result.code == 2, result.stderr
    assert "--calib" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()
