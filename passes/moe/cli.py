"""`mapper moe place` and `mapper moe synth`: placement from a trace alone, synthetic traces.

Only click is imported at start-up; the solver modules load when a command runs.
"""

from __future__ import annotations

from pathlib import Path

import click

from mapper.console import emit_json

_DTYPE_BYTES = {"fp32": 4.0, "fp16": 2.0, "bf16": 2.0, "fp8": 1.0, "int8": 1.0}


# An earlier `moe place -o` file: the contract's moe object.
_PLACEMENT_KEYS = ("num_devices", "num_experts", "layers", "metrics")


@click.group("moe")
def moe_group() -> None:
    """MoE expert placement from routing traces (MoETuner), and synthetic traces."""


@moe_group.command("place")
@click.option("--trace", "trace_path", type=click.Path(path_type=Path), required=True,
              help="Routing trace .npz: routes[layers, tokens, k], optional num_experts.")
@click.option("--devices", type=click.IntRange(min=1), required=True,
              help="Devices to place the experts on (must divide the expert count).")
@click.option("--devices-per-node", type=click.IntRange(min=1),
              help="Devices per node (default: the hardware's interconnect.devices_per_node).")
@click.option("--hw", "hardware", default="h100", show_default=True,
              help="Hardware whose links and roofline price transfers and experts.")
@click.option("--set", "overrides", multiple=True, metavar="PATH=VALUE",
              help="Override a hardware field (repeatable).")
@click.option("--trace-layout", type=click.Choice(["layers-first", "tokens-first"]),
              default="layers-first", show_default=True,
              help="tokens-first reads routes[tokens, layers, k] (serving engines).")
@click.option("--experts", type=click.IntRange(min=1),
              help="Experts per layer when the trace has no num_experts (default: max id + 1).")
@click.option("--hidden-size", type=click.IntRange(min=1), default=4096, show_default=True,
              help="Hidden size of a token (bytes moved = hidden size x dtype).")
@click.option("--ffn-size", type=click.IntRange(min=1), default=14336, show_default=True,
              help="Expert FFN width (SwiGLU expert: 3 x hidden x ffn weights).")
@click.option("--dtype", type=click.Choice(sorted(_DTYPE_BYTES)), default="bf16",
              show_default=True, help="dtype of tokens and expert weights.")
@click.option("--tokens-per-forward", type=click.IntRange(min=1),
              help="Tokens of one forward pass (default: the trace's token count).")
@click.option("--load-tolerance", type=click.FloatRange(min=0), default=0.05, show_default=True,
              help="Load may reach (1 + this) x mean when that saves --min-gain of traffic.")
@click.option("--min-gain", type=click.FloatRange(min=0, max=1, max_open=True), default=0.05,
              show_default=True, help="Traffic share a looser balance must save to be kept.")
@click.option("--method", type=click.Choice(["auto", "joint", "staged"]), default="auto",
              show_default=True, help="joint: one CP-SAT model; staged: MoETuner's stages.")
@click.option("--seed", type=int, default=0, show_default=True, help="Solver seed.")
@click.option("--time-limit", type=click.FloatRange(min=0, min_open=True), default=30.0,
              show_default=True, help="Solver budget, seconds (a placement is always returned).")
@click.option("-o", "--output", type=click.Path(path_type=Path),
              help="Write the plan's moe object (CONTRACTS.md section 5) to this file.")
@click.option("--force", is_flag=True,
              help="Replace an existing output file that is not an earlier placement.")
@click.option("--json", "as_json", is_flag=True, help="Print the moe object on stdout.")
def place_command(trace_path: Path, devices: int, devices_per_node: int | None, hardware: str,
                  overrides: tuple[str, ...], trace_layout: str, experts: int | None,
                  hidden_size: int, ffn_size: int, dtype: str, tokens_per_forward: int | None,
                  load_tolerance: float, min_gain: float, method: str, seed: int,
                  time_limit: float, output: Path | None, force: bool, as_json: bool) -> None:
    """Place the experts of a routing trace on --devices devices."""
    from mapper.hwmodels.loader import load_hardware
    from mapper.outputs import check_output_file, json_with_keys, write_output_file
    from mapper.passes.moe.cost import cost_model
    from mapper.passes.moe.place import PlaceOptions
    from mapper.passes.moe.section import solve_section
    from mapper.passes.moe.trace import load_trace
    from mapper.plan import dumps
    from mapper.units import format_time

    if output is not None:
        check_output_file(output, force=force, ours=json_with_keys(*_PLACEMENT_KEYS),
                          what="placement")
    hw = load_hardware(hardware, overrides)
    trace = load_trace(trace_path, layout=trace_layout,  # type: ignore[arg-type]
                       num_experts=experts, num_devices=devices)
    element = _DTYPE_BYTES[dtype]
    cost = cost_model(hw, hidden_size=hidden_size, dtype=dtype, element_bytes=element,
                      tokens_per_forward=tokens_per_forward or trace.tokens,
                      trace_tokens=trace.tokens,
                      expert_flops_per_token=2.0 * 3 * hidden_size * ffn_size,
                      expert_weight_bytes=3.0 * hidden_size * ffn_size * element,
                      experts_per_device=trace.num_experts // devices)
    per_node = devices_per_node or hw.interconnect.devices_per_node
    placed = solve_section(
        trace, num_devices=devices, devices_per_node=per_node, hardware=hw, cost=cost,
        layer_names=[f"layer{i}.moe" for i in range(trace.num_layers)],
        options=PlaceOptions(time_limit_s=time_limit, seed=seed, method=method,  # type: ignore[arg-type]
                             load_tolerance=load_tolerance, min_gain=min_gain))
    text = dumps(placed.section)
    if output is not None:
        write_output_file(output, text, force=force, ours=json_with_keys(*_PLACEMENT_KEYS),
                          what="placement")
    if as_json:
        emit_json(placed.section)
        return
    metrics = placed.section["metrics"]
    rows = [("mapper", metrics), *metrics["baselines"].items()]
    lines = [f"{trace.num_layers} layers x {trace.num_experts} experts (top-{trace.top_k}), "
             f"{trace.tokens} tokens on {devices} devices ({per_node} per node, {hw.name}): "
             f"{placed.result.method}, {placed.result.solver_status} for "
             f"{placed.result.scope}"
             + (f"; objective {placed.result.objective}, bound {placed.result.bound:.0f}, "
                f"gap {100 * placed.result.gap:.2f}%" if placed.result.gap is not None
                else ""),
             f"  {'placement':<12} {'load max/mean':>14} {'cross-device':>13} "
             f"{'cross-node':>11} {'all-to-all':>11}"]
    for name, values in rows:
        lines.append(f"  {name:<12} {values['load_max_over_mean']:>14.4f} "
                     f"{values['cross_device_fraction']:>13.4f} "
                     f"{values['cross_node_fraction']:>11.4f} "
                     f"{format_time(values['alltoall_s']):>11}")
    lines += [f"  note: {note}" for note in placed.result.notes]
    if output is not None:
        lines.append(f"  placement  {output}")
    click.echo("\n".join(lines))


@moe_group.command("synth")
@click.option("--layers", type=click.IntRange(min=1), default=32, show_default=True,
              help="MoE layers in the trace.")
@click.option("--experts", type=click.IntRange(min=1), default=8, show_default=True,
              help="Experts per layer.")
@click.option("--top-k", type=click.IntRange(min=1), default=2, show_default=True,
              help="Experts each token is routed to.")
@click.option("--tokens", type=click.IntRange(min=1), default=4096, show_default=True,
              help="Tokens per layer.")
@click.option("--skew", type=click.FloatRange(min=0), default=0.5, show_default=True,
              help="Zipf exponent of expert popularity (0: uniform).")
@click.option("--affinity", type=click.FloatRange(min=0, max=1), default=0.8,
              show_default=True, help="Chance a token keeps its expert community per layer.")
@click.option("--communities", type=click.IntRange(min=1),
              help="Expert communities per layer (default: experts / 4; random sizes).")
@click.option("--planted-devices", type=click.IntRange(min=1),
              help="Plant a balanced placement on this many devices (saved as 'planted').")
@click.option("--trace-layout", type=click.Choice(["layers-first", "tokens-first"]),
              default="layers-first", show_default=True,
              help="Array layout written: [layers, tokens, k] or [tokens, layers, k].")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the synthetic routing.")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="The .npz to write (routes, num_experts[, planted]).")
@click.option("--force", is_flag=True,
              help="Replace an existing output file that is not an earlier trace.")
@click.option("--json", "as_json", is_flag=True, help="Print a summary as one JSON object.")
def synth_command(layers: int, experts: int, top_k: int, tokens: int, skew: float,
                  affinity: float, communities: int | None, planted_devices: int | None,
                  trace_layout: str, seed: int, output: Path, force: bool, as_json: bool) -> None:
    """Write a seeded synthetic routing trace (skewed popularity, inter-layer affinity)."""
    import io

    from mapper.outputs import check_output_file, npz_with_arrays, write_output_file
    from mapper.passes.moe.synth import SynthSpec, save_trace, synthesize

    check_output_file(output, force=force, ours=npz_with_arrays("routes"), what="trace")

    spec = SynthSpec(layers=layers, experts=experts, top_k=top_k, tokens=tokens, skew=skew,
                     affinity=affinity, communities=communities,
                     planted_devices=planted_devices, seed=seed)
    trace = synthesize(spec)
    buffer = io.BytesIO()
    save_trace(trace, buffer, tokens_first=trace_layout == "tokens-first")
    write_output_file(output, buffer.getvalue(), force=force, ours=npz_with_arrays("routes"),
                      what="trace")
    summary = {"output": str(output), "layers": layers, "tokens": tokens, "top_k": top_k,
               "num_experts": experts, "layout": trace_layout,
               "planted_devices": planted_devices}
    if as_json:
        emit_json(summary)
    else:
        click.echo(f"wrote {output}: routes {layers} x {tokens} x {top_k} "
                   f"({trace_layout}), {experts} experts"
                   + (f", planted placement on {planted_devices} devices" if planted_devices
                      else ""))
