"""Build reference models: `python -m models.build NAME... [--out PATH] [--force]` or `--all`.

Prints the path of each model, one per line. Models come from the cache when built already;
with --out they are then copied there (a file path ending in .onnx, or a directory).
"""

from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path
from typing import Any

from models import REFERENCE_MODELS, _build, _copy_atomic


class _CallableModule(types.ModuleType):
    # Importing this module sets the package attribute `models.build` to the module, hiding
    # the function `models.build(name)`; being callable keeps `models.build(...)` working.
    def __call__(self, *args: Any, **kwargs: Any) -> Path:
        return _build(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m models.build", description="Build (or fetch from cache) reference models."
    )
    parser.add_argument("names", nargs="*", metavar="NAME", help=", ".join(REFERENCE_MODELS))
    parser.add_argument("--all", action="store_true", help="build every reference model")
    parser.add_argument(
        "--out",
        type=Path,
        help="copy the model here: a .onnx file path (one model) or a directory "
        "(as <name>.onnx + <name>.json)",
    )
    parser.add_argument("--cache-dir", type=Path, help="cache directory (default .cache/models)")
    parser.add_argument("--force", action="store_true", help="rebuild even if cached")
    args = parser.parse_args(argv)

    names = list(REFERENCE_MODELS) if args.all else args.names
    if not names:
        parser.error("give a model NAME or --all")
    unknown = [n for n in names if n not in REFERENCE_MODELS]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(REFERENCE_MODELS)}")
    to_file = args.out is not None and args.out.suffix == ".onnx"
    if to_file and len(names) > 1:
        parser.error("--out PATH.onnx takes one model; give a directory for several")

    for name in names:
        path = _build(name, args.cache_dir, force=args.force)
        if args.out is not None:
            dst = args.out if to_file else args.out / f"{name}.onnx"
            _copy_atomic(path.with_suffix(".json"), dst.with_suffix(".json"))
            _copy_atomic(path, dst)
            path = dst
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
