"""A model past the 2 GB protobuf limit compiles, keeps its weights in external data, and
peaks below 1.5x the weight bytes in resident memory (benchmarks/large_model.py)."""

from __future__ import annotations

import json

import pytest

from benchmarks.large_model import TARGET, measure


@pytest.mark.slow
def test_a_model_over_2gb_compiles_with_external_data_in_bounded_memory(tmp_path):
    figures = measure(tmp_path, layers=9)
    assert figures["weights"] > 2**31
    assert figures["external"] and figures["data_bytes"] == figures["weights"]
    assert figures["ratio"] < TARGET, f"peak {figures['peak'] / 2**30:.2f} GiB is " \
        f"{figures['ratio']:.2f}x the weights"
    plan = json.loads((tmp_path / "out" / "plan.json").read_text())
    assert plan["estimate"]["weight_bytes"] == figures["weights"]
