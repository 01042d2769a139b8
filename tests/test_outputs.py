"""The output rule: mapper never removes or overwrites a file it did not write (mapper.outputs)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from mapper.errors import UserError
from mapper.outputs import MARKER, write_output_dir, write_output_file
from tests import onnx_builders as build
from tests.conftest import run_mapper


def _tree(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return Path(build.save(build.legacy_ir3_cnn(), tmp_path / "m.onnx"))


def test_dot_with_the_input_model_is_refused_and_untouched(tmp_path, model):
    (tmp_path / "notes.txt").write_text("keep me")
    before = _tree(tmp_path)
    result = run_mapper("compile", "m.onnx", "--hw", "a100", "-o", ".", cwd=tmp_path)
    assert result.code == 2, result.stderr
    assert "not empty" in result.stderr and "--force" in result.stderr
    assert "Traceback" not in result.stderr
    assert _tree(tmp_path) == before
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temporary left


def test_force_adds_files_beside_the_users_and_keeps_them(tmp_path, model):
    (tmp_path / "notes.txt").write_text("keep me")
    before = _tree(tmp_path)
    result = run_mapper("compile", "m.onnx", "--hw", "a100", "-o", ".", "--force", cwd=tmp_path)
    assert result.code == 0, result.stderr
    after = _tree(tmp_path)
    for name, data in before.items():
        assert after[name] == data
    assert {"model.onnx", "plan.json", "report.html", MARKER} <= set(after)
    marker = json.loads((tmp_path / MARKER).read_text())
    assert sorted(marker["files"]) == ["model.onnx", "plan.json", "report.html"]
    # A rerun replaces mapper's files only; the user's files survive again.
    again = run_mapper("compile", "m.onnx", "--hw", "h100", "-o", ".", cwd=tmp_path)
    assert again.code == 0, again.stderr
    assert json.loads((tmp_path / "plan.json").read_text())["hardware"]["name"] == "h100"
    for name, data in before.items():
        assert (tmp_path / name).read_bytes() == data


def test_force_never_overwrites_a_file_mapper_did_not_write(tmp_path, model):
    target = tmp_path / "out"
    target.mkdir()
    (target / "plan.json").write_text("the user's own plan")
    result = run_mapper("compile", str(model), "--hw", "a100", "-o", str(target), "--force")
    assert result.code == 2
    assert "plan.json" in result.stderr and "did not write" in result.stderr
    assert (target / "plan.json").read_text() == "the user's own plan"
    assert sorted(p.name for p in target.iterdir()) == ["plan.json"]


def test_directory_holding_the_input_model(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    source = Path(build.save(build.legacy_ir3_cnn(), models / "model.onnx"))
    data = source.read_bytes()
    refused = run_mapper("compile", str(source), "--hw", "a100", "-o", str(models))
    assert refused.code == 2
    forced = run_mapper("compile", str(source), "--hw", "a100", "-o", str(models), "--force")
    assert forced.code == 2 and "model.onnx" in forced.stderr  # it would overwrite the input
    assert source.read_bytes() == data
    assert sorted(p.name for p in models.iterdir()) == ["model.onnx"]


def test_earlier_result_is_replaced_and_user_files_inside_it_kept(tmp_path, model):
    out = tmp_path / "out"
    assert run_mapper("compile", str(model), "--hw", "a100", "-o", str(out)).code == 0
    (out / "my-notes.md").write_text("added by the user")
    (out / "stale-from-mapper.txt").write_text("x")
    marker = json.loads((out / MARKER).read_text())
    marker["files"].append("stale-from-mapper.txt")
    (out / MARKER).write_text(json.dumps(marker))
    inode = out.stat().st_ino
    result = run_mapper("compile", str(model), "--hw", "h100", "-o", str(out))
    assert result.code == 0, result.stderr
    assert out.stat().st_ino == inode  # the directory itself was kept
    assert (out / "my-notes.md").read_text() == "added by the user"
    assert not (out / "stale-from-mapper.txt").exists()  # mapper's own earlier file
    assert json.loads((out / "plan.json").read_text())["hardware"]["name"] == "h100"


def test_empty_directory_is_used_and_keeps_its_mode(tmp_path, model):
    out = tmp_path / "empty"
    out.mkdir()
    out.chmod(0o775)
    assert run_mapper("compile", str(model), "--hw", "a100", "-o", str(out)).code == 0
    assert _mode(out) == 0o775
    assert (out / "plan.json").is_file()


def test_new_directory_gets_the_users_umask(tmp_path, model):
    script = (f"import os, sys; os.umask(0o022); from mapper.cli import main; "
              f"main(['compile', {str(model)!r}, '--hw', 'a100', '-o', "
              f"{str(tmp_path / 'new')!r}])")
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True)
    assert _mode(tmp_path / "new") == 0o755
    assert _mode(tmp_path / "new" / "plan.json") == 0o644


def test_failed_compile_leaves_an_earlier_result_alone(tmp_path, model):
    out = tmp_path / "out"
    assert run_mapper("compile", str(model), "--hw", "a100", "-o", str(out)).code == 0
    before = _tree(out)
    bad = run_mapper("compile", str(model), "--hw", "no-such-device", "-o", str(out))
    assert bad.code == 2
    assert _tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "out"]


def test_concurrent_compiles_leave_one_complete_result(tmp_path, model):
    out = tmp_path / "shared"
    mapper = Path(sys.executable).with_name("mapper")
    runs = [subprocess.Popen([str(mapper), "compile", str(model), "--hw", hw, "-o", str(out)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for hw in ("a100", "h100", "t4", "a100", "h100", "t4")]
    codes = [run.wait(timeout=300) for run in runs]
    assert codes == [0] * len(runs)
    plan = json.loads((out / "plan.json").read_text())
    device = plan["hardware"]["name"]
    report = (out / "report.html").read_text()
    assert device in report  # plan and report come from the same run
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["model.onnx", "plan.json", "report.html", MARKER])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_study_output_directory_follows_the_same_rule(tmp_path, model):
    (tmp_path / "keep.txt").write_text("mine")
    refused = run_mapper("study", str(model), "--hw", "a100", "--passes", "estimate",
                         "-o", str(tmp_path))
    assert refused.code == 2 and "--force" in refused.stderr
    out = tmp_path / "study"
    ok = run_mapper("study", str(model), "--hw", "a100,h100", "--passes", "estimate",
                    "-o", str(out))
    assert ok.code == 0, ok.stderr
    rows = (out / "results.jsonl").read_text().splitlines()
    assert len(rows) == 2
    assert (out / "results.csv").read_text().startswith("model,hardware,")


def test_single_file_outputs_are_never_overwritten_unless_ours(tmp_path):
    precious = tmp_path / "table.csv"
    precious.write_text("user,data\n1,2\n")
    with pytest.raises(UserError, match="already exists"):
        write_output_file(precious, "hardware,x\n", what="CSV",
                          ours=lambda p: p.read_text().startswith("hardware,"))
    assert precious.read_text() == "user,data\n1,2\n"
    ours = tmp_path / "ours.csv"
    ours.write_text("hardware,old\n")
    write_output_file(ours, "hardware,new\n", ours=lambda p: p.read_text().startswith("hardware,"))
    assert ours.read_text() == "hardware,new\n"
    write_output_file(precious, "forced\n", force=True)
    assert precious.read_text() == "forced\n"


def test_a_marker_cannot_point_outside_its_directory(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("not mapper's")
    out = tmp_path / "out"
    out.mkdir()
    (out / MARKER).write_text(json.dumps({"kind": "mapper-output",
                                          "files": ["../outside.txt", "/etc/passwd"]}))
    write_output_dir(out, lambda tmp: (tmp / "plan.json").write_text("{}"))
    assert outside.read_text() == "not mapper's"
    assert (out / "plan.json").read_text() == "{}"


def test_a_failing_writer_leaves_nothing(tmp_path):
    def fail(tmp: Path) -> None:
        (tmp / "half.txt").write_text("half")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        write_output_dir(tmp_path / "out", fail)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_unwritable_parent_is_a_clear_error(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    with pytest.raises(UserError, match="not writable"):
        write_output_dir(locked / "out", lambda tmp: None)
