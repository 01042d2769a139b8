"""mapper: a compiler-style deployment optimizer for ML models."""

__version__ = "0.1.0"
