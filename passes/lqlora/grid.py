"""The config grids the budget ILP chooses from: NormalFloat (`--grid nf`, the paper's 432
configs, emitted as bit-packed codes and a level table), integer groups (`--grid int`,
what com.microsoft.MatMulNBits holds natively: 2, 4 or 8-bit asymmetric codes with one
float scale and one packed zero point per group), or both (`--grid mixed`: each weight
takes whichever family serves it best at its bits)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from mapper.compression.codes import GroupCodes
from mapper.passes.lqlora.nf import NfConfig, NfWeight, paper_grid, quantize
from mapper.passes.rtn.quantize import round_to_nearest

GridName = Literal["nf", "int", "mixed"]


class Quantized(Protocol):
    """What a config's quantizer returns: something that decodes to float32."""

    def dequantize(self) -> np.ndarray:
        """float32 [rows, cols]."""
        ...


@dataclass(frozen=True, order=True)
class IntConfig:
    """b-bit asymmetric integer codes in groups of B, fp32 scale and b-bit zero point each."""

    bits: int
    block: int

    def label(self) -> str:
        """e.g. int4-g64."""
        return f"int{self.bits}-g{self.block}"

    def bits_per_weight(self) -> float:
        """b + (32 + b) / B."""
        return self.bits + (32 + self.bits) / self.block


Config = NfConfig | IntConfig


def int_grid() -> list[IntConfig]:
    """Every MatMulNBits width (2, 4, 8) with groups of 16 to 128."""
    return [IntConfig(b, g) for b, g in itertools.product((2, 4, 8), (16, 32, 64, 128))]


def grid(name: GridName) -> list[Config]:
    """The configs of grid `name`, in a fixed order."""
    nf = list(paper_grid()) if name in ("nf", "mixed") else []
    return nf + (list(int_grid()) if name in ("int", "mixed") else [])


def quantize_config(matrix: np.ndarray, config: Config) -> NfWeight | GroupCodes:
    """`matrix` [rows, cols] in `config`."""
    if isinstance(config, NfConfig):
        return quantize(matrix, config)
    return round_to_nearest(matrix, config.bits, config.block, symmetric=False)


def _lut_chain_bits(rows: int, cols: int, bits: int, group: int) -> int:
    """Bits of every initializer `lut_decode` writes for [rows, cols] codes of `bits` bits
    in groups of `group`, scales aside: packed codes, level table and index constants."""
    chunks = -(-rows * cols // 8)
    constants = 244 + 40 + (48 if (-(-cols // group)) * group != cols else 0)
    return 8 * (chunks * bits + 4 * (1 << bits) + constants)


def uses_bnb4(config: Config, fmt: str, kind: str = "matmul") -> bool:
    """Whether `config` on a site of `kind` is emitted as MatMulBnb4 under format `fmt`."""
    return fmt == "bnb4" and isinstance(config, NfConfig) and config.bits == 4 \
        and kind == "matmul"


def storage_bits(config: Config, rows: int, cols: int, bnb4: bool = False) -> int:
    """Bits the emitted model stores for a [rows, cols] matrix in `config`, every initializer
    of its decode counted: for NF the packed codes, the packed scale codes, the float32
    steps, the fp32 offset, and the small level and index tables of both decodes (about
    0.6 KiB); for int MatMulNBits' packed codes (partial last group padded), fp32 scales and
    packed zero points; `bnb4`: what MatMulBnb4 stores."""
    if bnb4:
        # MatMulBnb4: packed NF4 codes and one float32 absmax per block (double quantization
        # expanded at emission, its values exact).
        return 8 * (-(-rows * cols // 2)) + 32 * (rows * cols // config.block)
    if isinstance(config, NfConfig):
        blocks = rows * cols // config.block
        second = -(-blocks // config.scale_block)
        # Steps stored as float32 (see emit.py), the offset, and the block-scale shape.
        return (_lut_chain_bits(rows, cols, config.bits, config.block)
                + _lut_chain_bits(1, blocks, config.scale_bits, config.scale_block)
                + second * 32 + 8 * (4 + 24))
    groups = -(-cols // config.block)
    zero_bytes = -(-groups * config.bits // 8)
    return rows * (groups * config.block * config.bits + groups * 32 + zero_bytes * 8)


def fits(config: Config, cols: int) -> bool:
    """Whether a matrix of `cols` input channels can take `config` (NF blocks must tile it)."""
    if isinstance(config, NfConfig):
        return cols % config.block == 0
    return cols >= config.block
