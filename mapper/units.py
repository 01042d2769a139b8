"""Parsing and printing of sizes (`40MiB`), rates (`1555GB/s`), throughput and times."""

from __future__ import annotations

import math
import re

from mapper.errors import UserError

_SIZE_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}
_RATE_PREFIX = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12, "p": 1e15}
_TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
_FREQ_UNITS = {"hz": 1.0, "khz": 1e3, "mhz": 1e6, "ghz": 1e9}
_NUMBER = r"([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)"


def _split(text: str, what: str) -> tuple[float, str]:
    match = re.fullmatch(_NUMBER + r"\s*([A-Za-z/]*)", text.strip())
    if not match:
        raise UserError(f"cannot read {what} {text!r}: expected a number with a unit, e.g. "
                        + {"size": "'40MiB'", "rate": "'1555GB/s'", "throughput": "'312TFLOPS'",
                           "time": "'5us'", "frequency": "'1.41GHz'"}[what])
    return float(match.group(1)), match.group(2).lower()


def parse_size(value: str | int | float) -> int:
    """Bytes from `524288`, `512KiB`, `40MiB` or `80GB` (binary and decimal prefixes)."""
    if isinstance(value, bool):
        raise UserError(f"cannot read size {value!r}: expected e.g. '40MiB'")
    if isinstance(value, int | float):
        number, unit = float(value), ""
    else:
        number, unit = _split(value, "size")
    if unit not in _SIZE_UNITS:
        raise UserError(f"unknown size unit in {value!r}: use B, KB, MB, GB, KiB, MiB or GiB")
    return round(number * _SIZE_UNITS[unit])


def parse_rate(value: str | int | float) -> float:
    """Bytes per second from `1555GB/s`, `900GB/s`, `1.8TB/s` or `200Gb/s` (bits)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip()
    match = re.fullmatch(_NUMBER + r"\s*([kKmMgGtTpP]?)([bB])(?:ps|/s)", text)
    if not match:
        raise UserError(f"cannot read bandwidth {value!r}: expected e.g. '1555GB/s' or '200Gb/s'")
    number = float(match.group(1)) * _RATE_PREFIX[match.group(2).lower()]
    return number / 8.0 if match.group(3) == "b" else number


def parse_throughput(value: str | int | float) -> float:
    """Operations per second from `312TFLOPS`, `624TOPS` or a plain number."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip()
    match = re.fullmatch(_NUMBER + r"\s*([kKmMgGtTpP]?)(FLOPS|OPS|flops|ops)(?:/s)?", text)
    if not match:
        raise UserError(f"cannot read throughput {value!r}: expected e.g. '312TFLOPS' or '624TOPS'")
    return float(match.group(1)) * _RATE_PREFIX[match.group(2).lower()]


def parse_time(value: str | int | float) -> float:
    """Seconds from `5us`, `1.5ms` or a plain number of seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    number, unit = _split(str(value), "time")
    if unit not in _TIME_UNITS:
        raise UserError(f"unknown time unit in {value!r}: use s, ms, us or ns")
    return number * _TIME_UNITS[unit]


def parse_frequency(value: str | int | float) -> float:
    """Hertz from `1.41GHz`, `200MHz` or a plain number."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    number, unit = _split(str(value), "frequency")
    if unit not in _FREQ_UNITS:
        raise UserError(f"unknown frequency unit in {value!r}: use Hz, kHz, MHz or GHz")
    return number * _FREQ_UNITS[unit]


def format_size(num_bytes: float) -> str:
    """A short binary-prefixed size for humans: `1.5 MiB`."""
    if num_bytes < 1024:
        return f"{int(num_bytes)} B"
    exponent = min(int(math.log(num_bytes, 1024)), 4)
    return f"{num_bytes / 1024**exponent:.1f} {['B', 'KiB', 'MiB', 'GiB', 'TiB'][exponent]}"


def format_time(seconds: float) -> str:
    """A short time for humans: `12.3 us`, `4.56 ms`, `1.20 s`."""
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} us"
