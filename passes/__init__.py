"""The passes of the mapper pipeline, one module each."""
