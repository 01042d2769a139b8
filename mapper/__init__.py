"""mapper: a compiler-style deployment optimizer for ML models."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from mapper.driver import CompileResult
    from mapper.options import CompileOptions


def compile(model: str | Path, hardware: str, output_dir: str | Path,
            options: CompileOptions | None = None) -> CompileResult:
    """Compile an ONNX model for a hardware model; see `mapper.driver.compile_model`."""
    from mapper.driver import compile_model

    return compile_model(model, hardware, output_dir, options)
