"""Cross-field checks on a schema-valid hardware model; every problem comes with its YAML path."""

from __future__ import annotations

from mapper.units import format_size

from .schema import Hardware, KernelLimits


def check_hardware(hw: Hardware) -> list[str]:
    """Every relation between fields that the schema alone cannot check, as `path: message`."""
    return [*_check_memory(hw), *_check_compute(hw), *_check_kernel_limits(hw), *_check_names(hw)]


def _check_memory(hw: Hardware) -> list[str]:
    problems: list[str] = []
    if not hw.memory:
        return ["memory: must list at least one level (the last one is main memory)"]
    names = list(hw.memory)
    main_name, main = hw.main_memory
    managed = [name for name, level in hw.memory.items() if level.managed]
    if len(managed) > 1:
        problems.append(f"memory: at most one level may be managed, got {len(managed)}: "
                        + ", ".join(managed))
    if main.managed:
        problems.append(f"memory.{main_name}.managed: the last level is main memory and "
                        "cannot be the managed on-chip level")
    if main.scope != "device":
        problems.append(f"memory.{main_name}.scope: main memory (the last level) must be "
                        f"'device', got '{main.scope}'")
    # Unit-private levels sit nearest the compute units, so they come before shared ones.
    seen_device = None
    for name in names:
        scope = hw.memory[name].scope
        if scope == "device":
            seen_device = seen_device or name
        elif seen_device is not None:
            problems.append(f"memory.{name}.scope: unit-scope level listed after device-scope "
                            f"level '{seen_device}'; order levels nearest to farthest")
    for what in ("weights", "activations"):
        claimed = [name for name in names if what in hw.memory[name].holds]
        if len(claimed) > 1:
            problems.append(f"memory: {what} may be held by one level only, got "
                            + ", ".join(f"memory.{name}.holds" for name in claimed))
    for name in names:
        if hw.memory[name].holds and hw.memory[name].scope != "device":
            problems.append(f"memory.{name}.holds: a unit-scope level cannot hold the model's "
                            "weights or activations for good; use a device-scope level")
    for name in names[:-1]:
        level = hw.memory[name]
        if level.scope == "device" and level.size >= main.size:
            problems.append(f"memory.{name}.size: on-chip level ({format_size(level.size)}) must "
                            f"be smaller than main memory '{main_name}' ({format_size(main.size)})")
    return problems


def _check_compute(hw: Hardware) -> list[str]:
    problems = []
    sustained = hw.compute.sustained_clock_hz
    if sustained is not None and not 0 < sustained <= hw.compute.clock_hz:
        problems.append(f"compute.sustained_clock: {sustained / 1e6:.0f} MHz must be above 0 "
                        f"and at most the boost clock ({hw.compute.clock_hz / 1e6:.0f} MHz)")
    for dtype in hw.compute.matrix_shapes:
        if dtype not in hw.compute.peak_ops:
            problems.append(f"compute.matrix_shapes.{dtype}: no peak_ops entry for {dtype}; a "
                            "matrix shape needs the dtype's peak")
    if not hw.compute.peak_ops:
        problems.append("compute.peak_ops: must list at least one dtype")
    if hw.kind == "gpu" and hw.kernel_limits is None:
        problems.append("kernel_limits: required for kind 'gpu' (the tiling pass needs them)")
    return [*problems, *_check_cpu(hw)]


# A stated fp32 peak may exceed what the cores' vector units give by this relative tolerance.
_CPU_PEAK_TOLERANCE = 0.02


def _check_cpu(hw: Hardware) -> list[str]:
    cpu = hw.compute.cpu
    if hw.kind != "cpu":
        return [] if cpu is None else [f"compute.cpu: only for kind 'cpu', not '{hw.kind}'"]
    if cpu is None:
        return ["compute.cpu: required for kind 'cpu' (isa, simd_width_bits, "
                "fma_units_per_core)"]
    problems = []
    if cpu.simd_width_bits % 32:
        problems.append(f"compute.cpu.simd_width_bits: must be a multiple of 32, got "
                        f"{cpu.simd_width_bits}")
    fp32 = hw.compute.peak_ops.get("fp32")
    if fp32 is None:
        problems.append("compute.peak_ops.fp32: required for kind 'cpu'")
    else:
        derived = (hw.compute.units * hw.compute.clock_hz * cpu.fma_units_per_core
                   * (cpu.simd_width_bits // 32) * 2)
        # Below it is fine: a probed host states the sustained rate it measured
        # (`mapper hw probe`); above it no core can go.
        if fp32 - derived > _CPU_PEAK_TOLERANCE * derived:
            problems.append(
                f"compute.peak_ops.fp32: {fp32 / 1e12:.4g} TFLOPS disagrees with units x clock "
                f"x fma_units_per_core x simd lanes x 2 = {derived / 1e12:.4g} TFLOPS, the "
                "most the cores can do (a measured, lower rate is accepted)")
    return problems


def _check_kernel_limits(hw: Hardware) -> list[str]:
    limits: KernelLimits | None = hw.kernel_limits
    if limits is None:
        return []
    p = "kernel_limits."
    problems = []
    if limits.max_threads_per_block % limits.warp_size:
        problems.append(f"{p}max_threads_per_block: must be a multiple of warp_size "
                        f"({limits.warp_size}), got {limits.max_threads_per_block}")
    if limits.max_threads_per_block > limits.max_threads_per_unit:
        problems.append(f"{p}max_threads_per_block: {limits.max_threads_per_block} exceeds "
                        f"max_threads_per_unit ({limits.max_threads_per_unit})")
    if limits.max_threads_per_unit > limits.max_warps_per_unit * limits.warp_size:
        problems.append(f"{p}max_threads_per_unit: {limits.max_threads_per_unit} exceeds "
                        f"max_warps_per_unit * warp_size "
                        f"({limits.max_warps_per_unit * limits.warp_size})")
    if limits.shared_memory_per_block > limits.shared_memory_per_unit:
        problems.append(f"{p}shared_memory_per_block: {format_size(limits.shared_memory_per_block)}"
                        f" exceeds shared_memory_per_unit "
                        f"({format_size(limits.shared_memory_per_unit)})")
    if limits.register_allocation_unit % limits.warp_size:
        problems.append(f"{p}register_allocation_unit: registers are allocated per warp, so it "
                        f"must be a multiple of warp_size ({limits.warp_size}), "
                        f"got {limits.register_allocation_unit}")
    if limits.registers_per_unit % limits.register_allocation_unit:
        problems.append(f"{p}registers_per_unit: must be a multiple of register_allocation_unit "
                        f"({limits.register_allocation_unit}), got {limits.registers_per_unit}")
    if limits.max_registers_per_thread * limits.warp_size > limits.registers_per_unit:
        problems.append(f"{p}max_registers_per_thread: one warp at "
                        f"{limits.max_registers_per_thread} registers per thread needs more "
                        f"than registers_per_unit ({limits.registers_per_unit})")
    return problems


def _check_names(hw: Hardware) -> list[str]:
    problems = []
    lowered = [hw.name.lower(), *(alias.lower() for alias in hw.aliases)]
    duplicates = sorted({name for name in lowered if lowered.count(name) > 1})
    if duplicates:
        problems.append("aliases: names must be unique (case-insensitive), repeated: "
                        + ", ".join(duplicates))
    return problems
