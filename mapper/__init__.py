"""mapper: a compiler-style deployment optimizer for ML models."""

__version__ = "0.1.0"


def compile(model, hardware, output_dir, options=None):
    """Compile an ONNX model for a hardware model; see `mapper.driver.compile_model`."""
    from mapper.driver import compile_model

    return compile_model(model, hardware, output_dir, options)
