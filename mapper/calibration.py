"""Calibration inputs (`--calib FILE.npz`): one array per graph input, samples stacked first."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from mapper.errors import UserError


def read_npz(path: Path, label: str) -> dict[str, np.ndarray]:
    """Every array of a .npz file (no pickles); a user error names `label` if it cannot be."""
    if not path.is_file():
        raise UserError(f"{label} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: np.asarray(data[name]) for name in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise UserError(f"{label} is not a readable .npz file ({error})") from None


def load_calibration(path: Path) -> dict[str, np.ndarray]:
    """Read a calibration .npz; every array must have the same leading (sample) count."""
    arrays = read_npz(path, f"calibration file {str(path)!r}")
    if not arrays:
        raise UserError(f"calibration file {str(path)!r} holds no arrays: save one array per "
                        "graph input name, samples stacked on a new leading axis")
    counts = {name: (array.shape[0] if array.ndim else 0) for name, array in arrays.items()}
    if len(set(counts.values())) != 1 or 0 in counts.values():
        listing = ", ".join(f"{name}: {count}" for name, count in counts.items())
        raise UserError(f"calibration file {str(path)!r}: every array needs the same number of "
                        f"samples on its leading axis ({listing})")
    return arrays


def first_sample(calibration: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Sample 0 of every input (the leading axis dropped)."""
    return {name: array[0] for name, array in calibration.items()}
