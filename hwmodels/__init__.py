"""Declarative hardware models: the built-in YAML files, their schema and loader."""

from .loader import (
    builtin_catalog,
    builtin_names,
    hardware_file,
    load_hardware,
    set_managed_capacity,
)
from .schema import (
    DTYPES,
    SCHEMA_VERSION,
    Compute,
    DType,
    Hardware,
    Interconnect,
    KernelLimits,
    MemoryLevel,
)

__all__ = [
    "DTYPES",
    "SCHEMA_VERSION",
    "Compute",
    "DType",
    "Hardware",
    "Interconnect",
    "KernelLimits",
    "MemoryLevel",
    "builtin_catalog",
    "builtin_names",
    "hardware_file",
    "load_hardware",
    "set_managed_capacity",
]
