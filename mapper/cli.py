"""The `mapper` command line: a thin wrapper over the Python API with the contract's exit codes."""

from __future__ import annotations

import functools
import itertools
import logging
import re
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from mapper import __version__, budgets, flags
from mapper.console import emit_json
from mapper.diff import diff_command
from mapper.errors import BudgetError, MapperError, QualityGateError, UserError
from mapper.flags import parse_dim, parse_shape
from mapper.metrics import find_metric
from mapper.options import CompileOptions
from mapper.passes.arena.cli import arena_group
from mapper.passes.moe.cli import moe_group
from mapper.units import format_size, format_time

log = logging.getLogger("mapper")
# The settings file a compile or study picks up from the working directory.
DEFAULT_CONFIG = "mapper.yaml"


def _echo_columns(rows: Sequence[Sequence[str]]) -> None:
    """Print rows (the first one the header) as left-aligned columns."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
                   .rstrip())


def _print_summary(summary: dict[str, Any], seconds: float) -> None:
    flops = summary["flops"]
    lines = [f"compiled {summary['model']} for {summary['hardware']} in {seconds:.2f} s "
             f"-> {summary['output_dir']}",
             f"  nodes            {summary['nodes']} ({flops / 1e9:.3g} GFLOP)"]
    if summary.get("latency_s") is not None:
        lines += [f"  latency          {format_time(summary['latency_s'])} (estimate)",
                  f"  peak memory      {format_size(summary['peak_device_bytes'])}",
                  f"  off-chip traffic {format_size(summary['offchip_bytes'])}"]
    if summary.get("memory_fit"):
        lines.append(f"  fits             {_fit_text(summary)}")
    lines.append("  passes" + ("" if summary["passes"] else "           (none)"))
    for record in summary["passes"]:
        # The first note is each pass's one-line verdict (what it decided vs its baselines).
        note = record["notes"][0] if record.get("notes") else ""
        lines.append(f"    {record['name']:<9} {record['status']:<8} {record['seconds']:6.2f} s"
                     f"  {note}".rstrip())
    lines += [f"  plan             {summary['files']['plan']}",
              f"  report           {summary['files']['report']}"]
    click.echo("\n".join(lines))
    if summary.get("budgets"):
        click.echo("  budgets")
        _echo_columns([("  ", *row) for row in budgets.table(summary["budgets"])])


def _fit_text(summary: dict[str, Any]) -> str:
    """`yes`/`NO` with the bytes on both sides, level by level."""
    parts = [f"{' + '.join(row['holds'])} {format_size(row['bytes'])} of "
             f"{format_size(row['capacity'])} {row['memory']}" for row in summary["memory_fit"]]
    return ("yes: " if summary["fits"] else "NO: ") + "; ".join(parts)


def _warn_unfit(summary: dict[str, Any]) -> None:
    """A model that does not fit its device gets a warning line on stderr."""
    for row in summary.get("memory_fit") or ():
        if not row["fits"]:
            click.echo(f"mapper: warning: the model does not fit {summary['hardware']}: "
                       f"{' + '.join(row['holds'])} need {format_size(row['bytes'])}, its "
                       f"{row['memory']} holds {format_size(row['capacity'])}", err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mapper")
@click.option("-v", "--verbose", is_flag=True, help="Log each stage to stderr.")
@click.option("--debug", is_flag=True, help="Show tracebacks of internal errors.")
@click.pass_context
def cli(ctx: click.Context, verbose: bool, debug: bool) -> None:
    """mapper: plan how an ONNX model should run on a piece of hardware."""
    logging.basicConfig(stream=sys.stderr, level=logging.INFO if verbose else logging.WARNING,
                        format="mapper: %(message)s")
    ctx.obj = {"debug": debug}


def _read_config(path: Path) -> dict[str, Any]:
    """A config file's settings (`--config`): CompileOptions' fields as YAML keys."""
    import yaml

    if not path.is_file():
        raise UserError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise UserError(f"config file {str(path)!r} is not valid YAML: "
                        f"{str(error).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UserError(f"config file {str(path)!r} must hold a mapping of settings")
    return data


def _plan_options(command: Callable[..., Any], own_keys: tuple[str, ...] = ()
                  ) -> Callable[..., Any]:
    """Add every CompileOptions flag (declared once, on its config field) and --config to
    `command`, which then receives the typed `options` instead of the raw flag values; a
    config file's `own_keys` (the command's own settings, e.g. a study's models) go to it as
    `config_extra`."""
    names = flags.params_of(CompileOptions)

    @functools.wraps(command)
    def wrapper(**values: Any) -> Any:
        ctx = click.get_current_context()
        config_path = values.pop("config_file")
        if values.pop("no_config"):
            config_path = None
        elif config_path is None and Path(DEFAULT_CONFIG).is_file():
            # A repository commits its deployment settings as mapper.yaml beside the model.
            config_path = Path(DEFAULT_CONFIG)
            log.warning("settings from %s (--no-config ignores it)", DEFAULT_CONFIG)
        raw = {name: values.pop(name) for name in names}
        base = _read_config(config_path) if config_path is not None else {}
        extra = {key: base.pop(key) for key in own_keys if key in base}
        if own_keys:
            values["config_extra"] = extra
        where = f"config file {str(config_path)!r}" if config_path is not None else "option"
        if base:
            flags.check_keys(CompileOptions, base, where)
            base = flags.parse_config(CompileOptions, base)

        def given(param: str) -> bool:
            source = ctx.get_parameter_source(param)
            return source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT")

        tree = flags.merge(base, flags.collect(CompileOptions, raw, given))
        options = flags.validate(CompileOptions, tree, "option" if not base else where)
        return command(options=options, **values)

    for option in reversed(flags.click_options(CompileOptions)):
        wrapper = option(wrapper)
    wrapper = click.option("--no-config", "no_config", is_flag=True,
                           help=f"Ignore ./{DEFAULT_CONFIG} (flags and --config only).")(wrapper)
    return click.option("--config", "config_file", type=click.Path(path_type=Path),
                        help=f"Settings from a YAML file (CompileOptions' fields as keys, e.g. "
                        f"memory: {{objective: peak}}; `mapper schema config`); flags override "
                        f"it. Default: ./{DEFAULT_CONFIG} where one exists.")(wrapper)


@cli.command("compile")
@click.argument("model", type=click.Path(path_type=Path, dir_okay=True))
@click.option("--hw", "hardware", required=True, help="Built-in hardware name or a YAML file.")
@click.option("-o", "--output", "output", required=True, type=click.Path(path_type=Path),
              help="Output directory: new, empty, or an earlier mapper result (written "
              "atomically).")
@_plan_options
@click.option("--force", is_flag=True,
              help="Let -o add mapper's files to a non-empty directory that is not an earlier "
              "mapper result (a file mapper did not write is never replaced).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
def compile_command(model: Path, hardware: str, output: Path, options: CompileOptions,
                    force: bool, as_json: bool) -> None:
    """Compile MODEL for a hardware model into an optimized model, plan.json and a report."""
    import time

    from mapper.driver import compile_model
    from mapper.progress import PassProgress

    started = time.perf_counter()
    progress = PassProgress()
    try:
        result = compile_model(model, hardware, output, options, force=force, progress=progress)
    finally:
        progress.close()
    _warn_unfit(result.summary)
    violated = budgets.failed(result.summary["budgets"])
    if not as_json:
        _print_summary(result.summary, time.perf_counter() - started)
    elif not violated:
        emit_json(result.summary)
    if violated:
        names = ", ".join("the model does not fit the device memory" if row["given"] == "fit"
                          else f"{row['metric']} {find_metric(row['metric']).format(row['value'])}"
                          f" (limit {row['given']})" for row in violated)
        raise BudgetError(f"{len(violated)} budget(s) exceeded: {names}; the plan and report "
                          f"are in {output}", details={"budgets": result.summary["budgets"],
                                                       "summary": result.summary})


_STUDY_KEYS = ("models", "hardware", "sweeps")


def _study_inputs(models: tuple[Path, ...], hardware: str | None, sweeps: tuple[str, ...],
                  extra: dict[str, Any]) -> tuple[list[str], list[str], list[Any]]:
    """Models, hardware and sweeps from the flags, else from the study file (`models:`,
    `hardware:`, `sweeps: {PATH: [V1, V2]}`)."""
    from mapper.study import parse_sweep

    def listed(value: Any) -> list[str]:
        items = value.split(",") if isinstance(value, str) else list(value or ())
        return [str(item).strip() for item in items if str(item).strip()]

    names = [str(m) for m in models] or listed(extra.get("models"))
    specs = listed(hardware) if hardware else listed(extra.get("hardware"))
    texts = list(sweeps)
    if not texts and isinstance(extra.get("sweeps"), dict):
        texts = [f"{path}={','.join(listed(values))}" for path, values in
                 extra["sweeps"].items()]
    return names, specs, [parse_sweep(text) for text in texts]


def _study_table(rows: list[dict[str, Any]], paths: list[str]) -> list[list[str]]:
    """The study as printed columns (header first)."""
    many_models = len({row["model"] for row in rows}) > 1
    header = [*(["MODEL"] if many_models else []), "HARDWARE", *(p.upper() for p in paths),
              "LATENCY", "OFF-CHIP", "PEAK MEMORY", "FITS", "MANAGED LEVEL", "NOT OK"]
    table = [header]
    for row in rows:
        not_ok = [f"{name}:{status}" for name, status in (row.get("passes") or {}).items()
                  if status not in ("ok", "skipped")]
        if row["status"] == "failed":
            not_ok = [f"failed (exit {row['exit_code']})"]
        table.append([
            *([Path(row["model"]).name] if many_models else []),
            row.get("hardware") or row["hardware_spec"],
            *(row["settings"].get(p, "") for p in paths),
            format_time(row["latency_s"]) if row.get("latency_s") is not None else "-",
            format_size(row["offchip_bytes"]) if row.get("offchip_bytes") is not None else "-",
            format_size(row["peak_device_bytes"]) if row.get("peak_device_bytes") is not None
            else "-",
            {True: "yes", False: "NO"}.get(row.get("fits"), "-"),
            format_size(row["scratchpad_bytes"]) if row.get("scratchpad_bytes") else "-",
            " ".join(not_ok) or "-"])
    return table


@cli.command("study")
@click.argument("models", nargs=-1, type=click.Path(path_type=Path, dir_okay=True))
@click.option("--hw", "hardware", metavar="A,B",
              help="Hardware models to compare: built-in names or YAML files, comma-separated "
              "(or `hardware:` in the study file).")
@click.option("--sweep", "sweeps", multiple=True, metavar="PATH=V1,V2",
              help="A field and the values to try: a hardware field (memory.l2.size=20MiB,40MiB), "
              "'scratchpad=...' for each device's managed level, or a compile option by its "
              "config path (compression.bits=2,3,4). Repeatable: every combination is planned.")
@functools.partial(_plan_options, own_keys=_STUDY_KEYS)
@click.option("--jobs", "workers", type=click.IntRange(min=1), default=None,
              help="Local worker processes [default: the CPU count].")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local",
              show_default=True, help="Where jobs run: a local process pool, or a Ray cluster "
              "(pip install 'mapper[ray]').")
@click.option("--address", metavar="HOST:PORT",
              help="The Ray cluster to join (default: a local one started for the study).")
@click.option("--cache", "cache_dir", type=click.Path(path_type=Path, file_okay=False),
              help="Cache of job results by content [default: ~/.cache/mapper/study].")
@click.option("--no-cache", is_flag=True, help="Run every job; read and write no cache.")
@click.option("--fail-fast", is_flag=True,
              help="Stop at the first failing job and exit with its code (default: record it "
              "and go on).")
@click.option("--csv", "csv_path", type=click.Path(path_type=Path, dir_okay=False),
              help="Also write the table as CSV to this file.")
@click.option("-o", "--output", "output", type=click.Path(path_type=Path),
              help="Write results.jsonl/csv, pareto.csv, plots and report.html into this "
              "directory: new, empty, or an earlier mapper result.")
@click.option("--force", is_flag=True,
              help="Let -o/--csv write where something that is not an earlier mapper result "
              "is (a file mapper did not write is never replaced in a directory).")
@click.option("--json", "as_json", is_flag=True, help="Print the study as one JSON object.")
def study_command(models: tuple[Path, ...], hardware: str | None, sweeps: tuple[str, ...],
                  options: CompileOptions, config_extra: dict[str, Any], workers: int | None,
                  executor: str, address: str | None, cache_dir: Path | None, no_cache: bool,
                  fail_fast: bool, csv_path: Path | None, output: Path | None, force: bool,
                  as_json: bool) -> None:
    """Plan MODEL(s) for several hardware models and sweeps, as cached jobs; tabulate, plot
    and report the estimates (`--config study.yaml` holds models, hardware, sweeps too)."""
    import os

    from mapper.errors import JobFailedError
    from mapper.outputs import (
        check_output_dir,
        check_output_file,
        first_line_is,
        write_output_dir,
        write_output_file,
    )
    from mapper.study import (
        Cache,
        default_cache_dir,
        progress_printer,
        run_local,
        run_ray,
        run_study,
    )
    from mapper.study.outputs import results_csv, sweep_paths, winner
    from mapper.study.report import write_study_dir

    if address is not None and executor != "ray":
        raise UserError("--address joins a Ray cluster: add --executor ray")
    names, specs, parsed = _study_inputs(models, hardware, sweeps, config_extra)
    study_csv = first_line_is("model,hardware")
    if csv_path is not None:
        check_output_file(csv_path, force=force, ours=study_csv, what="CSV")
    if output is not None:
        check_output_dir(output, force)
    runner = run_ray(address) if executor == "ray" else run_local(workers or os.cpu_count() or 1)
    cache = None if no_cache else Cache(cache_dir or default_cache_dir())
    progress, close = progress_printer()
    try:
        result = run_study(names, specs, parsed, options, runner=runner, cache=cache,
                           fail_fast=fail_fast, progress=progress)
    finally:
        close()
    rows = list(result.rows)
    if csv_path is not None:
        write_output_file(csv_path, results_csv(rows), force=force, ours=study_csv, what="CSV")
    if output is not None:
        write_output_dir(output, lambda tmp: write_study_dir(result, tmp), force=force)
    best, verdict = winner(rows)
    failure = result.first_failure if fail_fast else None
    summary = {"jobs": len(rows), "ran": result.ran, "cached": result.cached,
               "failed": result.failed, "stopped_early": result.stopped_early,
               "winner": best["key"] if best else None, "verdict": verdict,
               "failures": [{"index": r["index"], "model": r["model"],
                             "hardware": r["hardware_spec"], "settings": r["settings"],
                             "exit_code": r["exit_code"], "error": r["error"]}
                            for r in rows if r["status"] == "failed"],
               "sweeps": {s.path: list(s.values) for s in parsed}, "rows": rows}
    if failure is not None:
        raise JobFailedError(f"job {failure['index']} ({failure['hardware_spec']} "
                             f"{failure['settings']}) failed: {failure['error']}",
                             failure["exit_code"], details={"study": summary})
    if as_json:
        emit_json(summary)
        return
    _echo_columns(_study_table(rows, sweep_paths(rows)))
    click.echo(f"{len(rows)} jobs: {result.ran} ran, {result.cached} cached, {result.failed} "
               f"failed in {result.seconds:.1f} s; {verdict}")
    for row in summary["failures"]:
        click.echo(f"  failed: job {row['index']} {row['hardware']} {row['settings'] or ''} "
                   f"exit {row['exit_code']}: {row['error']}")
    if csv_path is not None:
        click.echo(f"csv: {csv_path}")
    if output is not None:
        click.echo(f"results: {output} (report.html)")


@cli.command("compare")
@click.argument("model", type=click.Path(path_type=Path, dir_okay=True))
@click.option("--hw", "hardware", required=True, metavar="A,B,C",
              help="Hardware models to compare side by side, comma-separated.")
@_plan_options
@click.option("--jobs", "workers", type=click.IntRange(min=1), default=None,
              help="Local worker processes [default: the CPU count].")
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as one JSON object.")
def compare_command(model: Path, hardware: str, options: CompileOptions, workers: int | None,
                    as_json: bool) -> None:
    """MODEL on several hardware models: the headline figures side by side, winner marked."""
    import os

    from mapper.study import run_local, run_study
    from mapper.study.outputs import winner

    specs = [h.strip() for h in hardware.split(",") if h.strip()]
    result = run_study([str(model)], specs, [], options,
                       runner=run_local(min(workers or os.cpu_count() or 1, len(specs))))
    rows = list(result.rows)
    best, verdict = winner(rows)
    if as_json:
        emit_json({"model": str(model), "winner": best["hardware"] if best else None,
                   "verdict": verdict, "rows": rows})
        return
    figures = [("latency", "latency_s", format_time), ("peak memory", "peak_device_bytes",
                                                       format_size),
               ("off-chip", "offchip_bytes", format_size),
               ("weights", "weight_bytes", format_size)]
    names = [(row.get("hardware") or row["hardware_spec"])
             + (" *" if best is not None and row["key"] == best["key"] else "") for row in rows]
    table = [["", *names]]
    for title, column, fmt in figures:
        values = [row.get(column) for row in rows]
        lowest = min((v for v in values if v is not None), default=None)
        marked = len({v for v in values if v is not None}) > 1  # no mark when all equal
        table.append([title, *("-" if v is None else fmt(v) + (" <" if marked and v == lowest
                                                                else "") for v in values)])
    table.append(["fits", *({True: "yes", False: "NO"}.get(row.get("fits"), "-")
                            for row in rows)])
    table.append(["status", *(row["status"] if row["status"] == "ok"
                              else f"failed (exit {row['exit_code']})" for row in rows)])
    _echo_columns(table)
    click.echo(f"* winner: {verdict}; < marks the lowest of each figure")


@cli.command("verify")
@click.argument("original", type=click.Path(path_type=Path))
@click.argument("optimized", type=click.Path(path_type=Path))
@click.option("--inputs", type=click.Path(path_type=Path), help="Inputs as .npz (name -> array).")
@click.option("--rtol", type=float, default=1e-3, show_default=True,
              help="Relative tolerance per element.")
@click.option("--atol", type=float, default=1e-4, show_default=True,
              help="Absolute tolerance per element.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the random inputs (without --inputs).")
@click.option("--input-shape", "input_shapes", multiple=True, metavar="NAME=1x3x224x224",
              help="Static shape of an input with dynamic dims for the random inputs "
              "(repeatable).")
@click.option("--dim", "dims", multiple=True, metavar="NAME=VALUE",
              help="Value of a named dynamic dim for the random inputs (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as one JSON object.")
def verify_command(original: Path, optimized: Path, inputs: Path | None, rtol: float,
                   atol: float, seed: int, input_shapes: tuple[str, ...], dims: tuple[str, ...],
                   as_json: bool) -> None:
    """Run ORIGINAL and OPTIMIZED in onnxruntime on the same inputs; exit 4 if they differ."""
    from mapper.verify import verify_models

    result = verify_models(original, optimized, inputs=inputs, seed=seed, rtol=rtol, atol=atol,
                           input_shapes=dict(parse_shape(v) for v in input_shapes),
                           dims=dict(parse_dim(v) for v in dims))
    payload = {"ok": result.ok, "inputs": result.inputs_source, "rtol": rtol, "atol": atol,
               "outputs": [{"name": o.name, "shape": list(o.shape), "max_abs": o.max_abs,
                            "max_rel": o.max_rel, "cosine": o.cosine, "ok": o.ok}
                           for o in result.outputs]}
    if as_json:
        if result.ok:  # a failure prints one object: the error, carrying the comparison
            emit_json(payload)
    else:
        click.echo(f"inputs: {result.inputs_source}; tolerance rtol={rtol:g} atol={atol:g}")
        for o in result.outputs:
            click.echo(f"  {o.name:<24} {'x'.join(map(str, o.shape)) or 'scalar':<16} "
                       f"max_abs {o.max_abs:.3e}  max_rel {o.max_rel:.3e}  "
                       f"cosine {o.cosine:.6f}  {'ok' if o.ok else 'MISMATCH'}")
    if not result.ok:
        bad = ", ".join(o.name for o in result.outputs if not o.ok)
        raise QualityGateError(f"outputs differ beyond rtol={rtol:g}, atol={atol:g}: {bad}",
                               details=payload)


@cli.command("measure")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--hw", "hardware", help="Also price the model with this hardware model (a "
              "built-in name or a YAML file, e.g. one from `mapper hw probe`) and compare.")
@click.option("--input-shape", "input_shapes", multiple=True, metavar="NAME=1x3x224x224",
              help="Static shape of an input with dynamic dims (repeatable).")
@click.option("--dim", "dims", multiple=True, metavar="NAME=VALUE",
              help="Value of a named dynamic dim (repeatable).")
@click.option("--runs", type=click.IntRange(min=1), default=20, show_default=True,
              help="Timed runs (and profiled runs for the per-op times).")
@click.option("--warmup", type=click.IntRange(min=0), default=3, show_default=True,
              help="Untimed runs before them.")
@click.option("--threads", type=click.IntRange(min=0), default=0, show_default=True,
              help="onnxruntime intra-op threads (0: its default, one per physical core).")
@click.option("--ort-level", type=click.Choice(["none", "basic", "extended", "all"]),
              default="all", show_default=True,
              help="onnxruntime graph optimizations; 'none' runs every model node as is, so "
              "each gets its own measured time.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the inputs.")
@click.option("--top", type=click.IntRange(min=0), default=15, show_default=True,
              help="Nodes to print, the slowest first (--json lists every node).")
@click.option("--json", "as_json", is_flag=True, help="Print the measurement as one JSON object.")
def measure_command(model: Path, hardware: str | None, input_shapes: tuple[str, ...],
                    dims: tuple[str, ...], runs: int, warmup: int, threads: int,
                    ort_level: str, seed: int, top: int, as_json: bool) -> None:
    """Run MODEL in onnxruntime on this CPU: latency (median, min, max) and per-op times from
    its profiler; with --hw, the estimate next to them."""
    from mapper.measure import measure_model

    result = measure_model(model, hardware=hardware,
                           input_shapes=dict(parse_shape(v) for v in input_shapes),
                           dims=dict(parse_dim(v) for v in dims), runs=runs, warmup=warmup,
                           threads=threads, ort_level=ort_level, seed=seed)
    if as_json:
        emit_json(result.to_dict())
        return
    with_hw = result.estimate_s is not None

    def cells(measured: float | None, estimate: float | None) -> list[str]:
        row = ["-" if measured is None else format_time(measured)]
        if with_hw:
            row += ["-" if estimate is None else format_time(estimate),
                    f"{estimate / measured:.2f}" if estimate is not None and measured
                    else "-"]
        return row

    head = ["MEASURED", *(["ESTIMATE", "EST/MEAS"] if with_hw else [])]
    click.echo(f"{model}: {runs} runs after {warmup} warm-up, onnxruntime CPU, "
               f"threads {threads or 'default'}, optimizations {ort_level}")
    click.echo(f"  latency   median {format_time(result.median_s)}, min "
               f"{format_time(result.min_s)}, max {format_time(result.max_s)}")
    if with_hw:
        click.echo(f"  estimate  {format_time(result.estimate_s or 0.0)} on {result.hardware} "
                   f"(predicted/measured {result.ratio:.2f})")
    click.echo("  per op type (profiler, per run)")
    _echo_columns([["    OP", "NODES", *head],
                   *([f"    {o.op}", str(o.nodes), *cells(o.measured_s, o.estimate_s)]
                     for o in result.op_types)])
    ranked = sorted(result.nodes, key=lambda n: -(n.measured_s or 0.0))
    click.echo(f"  slowest nodes ({min(top, len(ranked))} of {len(ranked)})")
    _echo_columns([["    NODE", "OP", *head, "NOTE"],
                   *([f"    {n.node}", n.op, *cells(n.measured_s, n.estimate_s),
                      ("onnxruntime's own node" if not n.in_model else
                       f"ran inside {n.ran_as}" if n.ran_as else
                       "fused or removed by onnxruntime" if n.measured_s is None else "")]
                     for n in ranked[:top])])


_TILE_DTYPES = ["fp64", "fp32", "tf32", "fp16", "bf16", "fp8", "int16", "int8", "int4", "fp4"]


@cli.command("tile")
@click.option("--m", "m", type=click.IntRange(min=1), required=True, help="Rows of A and C.")
@click.option("--n", "n", type=click.IntRange(min=1), required=True, help="Columns of B and C.")
@click.option("--k", "k", type=click.IntRange(min=1), required=True, help="The reduction dim.")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True,
              help="Independent GEMMs of this shape (batched MatMul).")
@click.option("--dtype", type=click.Choice(_TILE_DTYPES), default="fp16", show_default=True,
              help="Element type of the GEMM's operands.")
@click.option("--hw", "hardware", required=True, help="Built-in hardware name or a YAML file.")
@click.option("--set", "overrides", multiple=True, metavar="PATH=VALUE",
              help="Override a hardware field (repeatable).")
@click.option("--allow-fallback", is_flag=True,
              help="Tile a dtype the hardware lacks in the nearest one it has (else exit 3).")
@click.option("--triton-only", is_flag=True,
              help="Only configs Triton's tutorial kernel runs as-is (no split-K, persistent).")
@click.option("--seed", type=int, default=0, show_default=True, help="Solver seed.")
@click.option("--time-limit", type=float, default=30.0, show_default=True,
              help="Solver budget, seconds.")
@click.option("--json", "as_json", is_flag=True, help="Print the kernel record as JSON.")
def tile_command(m: int, n: int, k: int, batch: int, dtype: str, hardware: str,
                 overrides: tuple[str, ...], allow_fallback: bool, triton_only: bool,
                 seed: int, time_limit: float, as_json: bool) -> None:
    """Solve one GEMM's tile configuration (CONTRACTS.md section 6 record)."""
    from mapper.hwmodels.loader import load_hardware
    from mapper.options import TilingConfig
    from mapper.passes.tiling import tile_problem
    from mapper.passes.tiling.problems import GemmProblem

    hw = load_hardware(hardware, overrides)
    config = TilingConfig(dtype_fallback=allow_fallback, triton_only=triton_only,
                          problem_time_limit_s=time_limit)
    record = tile_problem(hw, GemmProblem.dense(m, n, k, dtype, batch=batch), config,
                          seed=seed, budget_s=time_limit)
    if as_json:
        emit_json(record)
        return
    tile = ", ".join(f"{key}={value}" for key, value in record["tile"].items())
    flops = record["flops"] / record["est_time_s"] if record["est_time_s"] else 0.0
    shape = "x".join(map(str, (batch, m, n, k) if batch > 1 else (m, n, k)))
    lines = [f"{shape} {record['dtype']} GEMM on {hw.name}",
             f"  tile        {tile}",
             f"  resources   smem {format_size(record['smem_bytes'])}, regs/thread "
             f"{record['regs_per_thread']}, blocks/unit {record['blocks_per_unit']}",
             f"  time        {format_time(record['est_time_s'])} ({flops / 1e12:.4g} TFLOP/s, "
             f"{record['bound']}-bound)",
             f"  solver      cp-sat {record['solver']['status']}"]
    if record.get("triton"):
        lines.append("  triton      " + ", ".join(f"{key}={value}" for key, value
                                                 in record["triton"].items()))
    if record["fallback"]:
        lines.append(f"  fallback    {record['fallback']['reason']}")
    click.echo("\n".join(lines))


@cli.command("verify-plan")
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("plan", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the verdict as one JSON object.")
def verify_plan_command(model: Path, plan: Path, as_json: bool) -> None:
    """Check PLAN (plan.json) against MODEL (its model.onnx) by CONTRACTS.md 2-4; exit 4 if not."""
    from mapper.verify_plan import verify_plan

    check = verify_plan(model, plan)
    if as_json:
        if check.ok:  # a failure prints one object: the error, carrying the violations
            emit_json(check.to_dict())
    elif check.ok:
        parts = [f"sections checked: {', '.join(check.checked)}"]
        if check.traffic is not None:
            parts.append(f"traffic {check.traffic['total']} bytes (stream-all "
                         f"{check.traffic['stream_all']})")
        if check.arena is not None:
            parts.append(f"arena {check.arena['size']} bytes (lower bound "
                         f"{check.arena['lower_bound']}, greedy {check.arena['greedy_by_size']})")
        click.echo(f"{plan}: valid; " + "; ".join(parts))
    else:
        for violation in check.violations[:20]:
            click.echo(f"  {violation}")
        if len(check.violations) > 20:
            click.echo(f"  ... and {len(check.violations) - 20} more")
    if not check.ok:
        raise QualityGateError(f"{plan} breaks {len(check.violations)} rule(s) of CONTRACTS.md "
                               f"sections 2-4 for {model}", subject={"file": str(plan)},
                               details=check.to_dict())


@cli.group("hw")
def hw_group() -> None:
    """List, show, validate and probe hardware models."""


@hw_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the list as one JSON array.")
def hw_list(as_json: bool) -> None:
    """The built-in hardware models."""
    from mapper.hwmodels.loader import builtin_catalog

    catalog = builtin_catalog()
    if as_json:
        emit_json([{"name": hw.name, "aliases": list(hw.aliases), "kind": hw.kind,
                     "vendor": hw.vendor, "description": hw.description} for hw in catalog])
        return
    rows = [("NAME", "KIND", "PEAK", "MEMORY", "BANDWIDTH", "MANAGED LEVEL", "ALIASES")]
    for hw in catalog:
        main_name, main = hw.main_memory
        dtype, best = max(hw.compute.peak_ops.items(), key=lambda item: item[1])
        managed = hw.managed_level
        rows.append((
            hw.name, hw.kind, f"{best / 1e12:.4g} T ({dtype})",
            f"{format_size(main.size)} {main_name}", f"{main.bandwidth / 1e9:.4g} GB/s",
            f"{managed[0]} {format_size(managed[1].size)}" if managed else "-",
            ", ".join(hw.aliases)))
    _echo_columns(rows)


@hw_group.command("show")
@click.argument("name")
@click.option("--set", "overrides", multiple=True, metavar="PATH=VALUE",
              help="Override a field before showing it, e.g. memory.l2.size=80MiB "
              "(repeatable).")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object (the default and only output of this command).")
def hw_show(name: str, overrides: tuple[str, ...], as_json: bool) -> None:
    """The fully resolved hardware model NAME (overrides applied), as JSON."""
    from mapper.hwmodels.loader import load_hardware

    del as_json  # the model is JSON either way; the flag is accepted like on every command
    emit_json(load_hardware(name, overrides).to_plan_dict())


@hw_group.command("validate")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the verdict as one JSON object.")
def hw_validate(path: Path, as_json: bool) -> None:
    """Check a hardware YAML file; report every problem at once."""
    from mapper.hwmodels.loader import load_hardware

    if path.suffix.lower() not in (".yaml", ".yml"):
        raise UserError(f"{str(path)!r} is not a .yaml/.yml file")
    hw = load_hardware(str(path))
    if as_json:
        emit_json({"path": str(path), "valid": True, "name": hw.name, "kind": hw.kind})
    else:
        click.echo(f"{path}: valid ({hw.name}, {hw.kind})")


@hw_group.command("probe")
@click.option("-o", "--output", "output", required=True,
              type=click.Path(path_type=Path, dir_okay=False),
              help="The hardware file to write (.yaml); its stem becomes the model's name.")
@click.option("--seconds", type=click.FloatRange(min=0, min_open=True), default=20.0,
              show_default=True, help="Time budget of the microbenchmarks (each runs at least "
              "5 times, more while its share lasts).")
@click.option("--force", is_flag=True,
              help="Replace -o even when it is not a file `hw probe` wrote.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="What to probe: this host's CPU (onnxruntime), or its CUDA GPU (torch "
              "with CUDA; the file starts from the built-in model of the same GPU).")
@click.option("--like", metavar="NAME",
              help="With --device cuda: the built-in GPU model to start from when the "
              "device's name matches none.")
@click.option("--json", "as_json", is_flag=True,
              help="Print every fact and measurement as one JSON object.")
def hw_probe(output: Path, seconds: float, force: bool, device: str, like: str | None,
             as_json: bool) -> None:
    """Write a hardware model of this machine: a CPU (facts read from the OS, rates measured
    with onnxruntime) or, with --device cuda, its GPU (rates measured with torch)."""
    from mapper.hwmodels.loader import load_hardware
    from mapper.outputs import check_output_file, first_line_is, write_output_file
    from mapper.probe import PROBE_HEADER, probe, probe_name, render_yaml, result_dict

    if output.suffix.lower() not in (".yaml", ".yml"):
        raise UserError(f"-o {str(output)!r}: a hardware file ends in .yaml or .yml",
                        subject={"flag": "--output"})
    if like is not None and device != "cuda":
        raise UserError("--like only applies to --device cuda (a CPU probe starts from no "
                        "built-in model)", subject={"flag": "--like"})
    ours = first_line_is(PROBE_HEADER)
    check_output_file(output, force=force, ours=ours, what="hardware")
    name = probe_name(output)
    if device == "cuda":
        _probe_cuda(output, name, like, seconds, force, as_json)
        return
    result = probe(seconds)
    write_output_file(output, render_yaml(result, name), force=force, ours=ours, what="hardware")
    load_hardware(str(output))  # what the probe writes must load; a failure here is a bug
    payload = result_dict(result, output, name)
    if as_json:
        emit_json(payload)
        return
    rows = [("FIELD", "VALUE", "HOW")]
    for key, unit, scale in (("fp32_gemm", "GFLOP/s", 1e9), ("fp32_gemm_1t", "GFLOP/s", 1e9),
                             ("int8_gemm", "GOP/s", 1e9), ("bandwidth", "GB/s", 1e9),
                             ("op_overhead", "us", 1e-6)):
        item = payload["measurements"].get(key)
        if item is not None:
            rows.append((key, f"{item['value'] / scale:.4g} {unit}", item["method"]))
    click.echo(f"probed {payload['facts']['cpu']['value']} in {result.seconds:.1f} s -> {output}")
    _echo_columns([("  " + a, b, c) for a, b, c in rows])
    for line in result.skipped:
        click.echo(f"  not measured: {line}")


def _probe_cuda(output: Path, name: str, like: str | None, seconds: float, force: bool,
                as_json: bool) -> None:
    """`hw probe --device cuda`: measure the GPU, write its model, print what was found."""
    from mapper.hwmodels.loader import hardware_file, load_hardware
    from mapper.outputs import first_line_is, write_output_file
    from mapper.probe import PROBE_HEADER
    from mapper.probe_gpu import probe_gpu, render_gpu_yaml, result_dict

    result = probe_gpu(like, seconds)
    template = load_hardware(result.template)
    text = render_gpu_yaml(result, hardware_file(result.template).read_text(),
                           template.main_memory[0], name)
    write_output_file(output, text, force=force, ours=first_line_is(PROBE_HEADER),
                      what="hardware")
    load_hardware(str(output))  # what the probe writes must load; a failure here is a bug
    payload = result_dict(result, output, name)
    if as_json:
        emit_json(payload)
        return
    click.echo(f"probed {result.facts.name} (as {result.template}) in {result.seconds:.1f} s "
               f"-> {output}")
    rows = [("FIELD", "VALUE", "HOW"),
            ("sustained_clock", f"{result.sustained_clock_hz / 1e9:.4g} GHz",
             result.clock_method)]
    for item in result.measurements:
        value = (f"{item.value / 1e12:.4g} TFLOP/s" if item.unit == "ops/s" else
                 f"{item.value / 1e9:.4g} GB/s" if item.unit == "bytes/s" else
                 f"{item.value * 1e6:.3g} us")
        rows.append((item.name, value, item.method))
    _echo_columns([("  " + a, b, c) for a, b, c in rows])


@cli.command("schema")
@click.argument("subject", type=click.Choice(["plan", "hardware", "config"]))
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object (the default and only output of this command).")
def schema_command(subject: str, as_json: bool) -> None:
    """Print the JSON Schema of plan.json, of a hardware model file, or of a config file."""
    del as_json  # a schema is JSON either way; the flag is accepted like on every command
    if subject == "plan":
        from mapper.plan_schema import plan_json_schema

        emit_json(plan_json_schema())
        return
    from mapper.hwmodels.schema import Hardware

    model: Any = Hardware if subject == "hardware" else CompileOptions
    schema = model.model_json_schema(by_alias=True)
    schema["title"] = {"hardware": "mapper.hw/1", "config": "mapper compile config"}[subject]
    emit_json({"$schema": "https://json-schema.org/draft/2020-12/schema", **schema})


cli.add_command(moe_group)
cli.add_command(arena_group)
cli.add_command(diff_command)


_FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")
_FILE = re.compile(r"\b(?:file|directory|model|path)\s+'([^']+)'")
_FIELD = re.compile(r"\b((?:compute|memory|interconnect|kernel_limits)\.[A-Za-z0-9_.]+)")


def _subject(message: str, given: dict[str, str]) -> dict[str, str]:
    """The flag, file or field an error is about: what the error says, else what its message
    names first."""
    if given:
        return given
    for key, pattern in (("flag", _FLAG), ("file", _FILE), ("field", _FIELD)):
        found = pattern.search(message)
        if found:
            return {key: found.group(1).rstrip(".")}
    return {}


def _error_payload(kind: str, code: int, message: str, subject: dict[str, str] | None = None,
                   details: dict[str, Any] | None = None) -> dict[str, Any]:
    """`--json` errors: {"error", "exit_code", "message", the flag/file/field, details}."""
    return {"error": kind, "exit_code": code, "message": message,
            **_subject(message, subject or {}), **(details or {})}


def _click_subject(error: click.ClickException) -> dict[str, str]:
    param = getattr(error, "param", None)
    if param is not None and getattr(param, "opts", None):
        return {"flag": max(param.opts, key=len)} if param.opts[0].startswith("-") \
            else {"argument": param.name or ""}
    option = getattr(error, "option_name", None)
    return {"flag": option} if option else {}


def _wants_json(argv: Sequence[str]) -> bool:
    """Whether the command line asks for machine output (`--json`, `--format json`)."""
    args = list(argv)
    return "--json" in args or "--format=json" in args or any(
        a == "--format" and b == "json" for a, b in itertools.pairwise(args))


def _run(entry: Callable[..., Any], argv: Sequence[str] | None) -> int:
    args = list(argv) if argv is not None else sys.argv[1:]
    debug = "--debug" in args
    as_json = _wants_json(args)

    def report(kind: str, code: int, message: str, subject: dict[str, str] | None = None,
               details: dict[str, Any] | None = None, text: str | None = None) -> int:
        if as_json:
            emit_json(_error_payload(kind, code, message, subject, details))
        else:
            click.echo(text or f"mapper: error: {message}", err=True)
        return code

    try:
        entry.main(args=args, prog_name="mapper", standalone_mode=False)
    except click.exceptions.Abort:
        return report("aborted", 130, "aborted", text="mapper: aborted")
    except click.ClickException as error:
        if not as_json:
            error.show()
            return 2
        return report("usage", 2, error.format_message(), _click_subject(error))
    except MapperError as error:
        if debug and error.exit_code == 1:
            traceback.print_exc()
        return report(error.kind, error.exit_code, str(error), error.subject, error.details)
    except KeyboardInterrupt:
        return report("aborted", 130, "interrupted", text="mapper: interrupted")
    except Exception as error:
        if debug:
            traceback.print_exc()
        return report("internal", 1, f"internal error: {type(error).__name__}: {error}. This is "
                      "a bug in mapper: please report it with the model and command (rerun with "
                      "--debug for the traceback)",
                      text=f"mapper: internal error: {type(error).__name__}: {error}. This is a "
                      "bug in mapper: please report it with the model and command (rerun with "
                      "--debug for the traceback)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point: run the CLI and exit with the contract's code."""
    code = _run(cli, argv)
    sys.exit(code)
