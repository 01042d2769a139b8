"""report.html's header (what the plan was compiled with) and 'What to try next' (suggestions
the plan supports, each naming a flag), from real compiles; the report is a pure function of
plan.json."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from mapper.report import render_report, suggestions
from tests.conftest import run_mapper


@pytest.fixture(scope="module")
def resnet_small() -> str:
    import models

    return str(models.build("resnet_small"))


def _compile(out: Path, *args: str) -> tuple[dict[str, Any], str]:
    result = run_mapper("compile", *args, "-o", str(out))
    assert result.code == 0, result.stderr
    plan = json.loads((out / "plan.json").read_text())
    report = (out / "report.html").read_text()
    assert report == render_report(plan)  # a pure function of plan.json
    return plan, report


def test_a_tight_npu_gets_suggestions_with_flags(tmp_path, resnet_small):
    plan, report = _compile(tmp_path / "u55", resnet_small, "--hw", "ethos-u55",
                            "--scratchpad", "128KiB")
    tips = suggestions(plan)
    text = " ".join(tips)
    assert "It does not fit" in text and "816.0 KiB" in text  # what it needs, and where
    assert "<code>--scratchpad 1MiB</code> where the device's sram has that much" in text
    assert "<code>--scratchpad 256KiB</code>" in text and "non-compulsory" in text
    assert "--sweep scratchpad=256KiB,512KiB,1MiB" in text
    assert "<code>--precision int8</code>" in text  # the dtype its GEMMs were tiled at
    assert "What to try next" in report and all(tip in report for tip in tips)
    assert "--hw ethos-u55" in report and "sram managed by the memory pass, 128.0 KiB" in report


def test_a_fallback_pass_suggests_a_longer_time_limit(tmp_path, resnet_small):
    plan, _ = _compile(tmp_path / "a100", resnet_small, "--hw", "a100")
    assert suggestions(plan) == []  # fits, proven optimal, nothing spilled
    assert "Nothing in this plan points to a change" in render_report(plan)
    slow = copy.deepcopy(plan)
    next(p for p in slow["passes"] if p["name"] == "memory")["status"] = "fallback"
    assert any("<code>--time-limit" in tip and "memory" in tip for tip in suggestions(slow))
    assert "memory ran out of time" in render_report(slow)


def test_header_names_precision_inputs_passes_and_compression(tmp_path):
    import models

    gpt = str(models.build("gpt_decoder"))
    _, report = _compile(tmp_path / "gpt", gpt, "--hw", "t4", "--dim", "seq=64",
                        "--precision", "fp16", "--compress", "rtn", "--bits", "4",
                        "--skip", "arena", "--seed", "3")
    for words in ("--precision fp16", "input_ids: 1x64", "--hw t4", "--compress rtn --bits 4",
                  "--seed 3", "skipped moe", "arena"):
        assert words in report, words
    ran = report.split("<th>passes</th><td>")[1].split("</td>")[0]
    assert "arena" not in ran.split("; skipped")[0]
    assert "rtn" in ran and "estimate" in ran
