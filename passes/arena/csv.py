"""MiniMalloc's CSV format: `id,lower,upper,size` (half-open `[lower, upper)`), optional
`alignment`; solutions are the same rows with an `offset` column added."""

from __future__ import annotations

import csv as _csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mapper.errors import UserError
from mapper.passes.arena.problem import Buffer, validate_buffers

REQUIRED = ("id", "lower", "upper", "size")
OPTIONAL = ("alignment", "offset")


@dataclass(frozen=True)
class CsvProblem:
    """A parsed problem file: the buffers and the raw rows to echo back with offsets."""

    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    buffers: tuple[Buffer, ...]


def _integer(text: str, column: str, line: int, path: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise UserError(f"{path}, line {line}: {column} {text!r} is not an integer") from None


def parse_csv(text: str, path: str = "<csv>") -> CsvProblem:
    """Parse MiniMalloc CSV text; UserError (naming file, line and column) when malformed."""
    records = [row for row in _csv.reader(io.StringIO(text)) if any(f.strip() for f in row)]
    if not records:
        raise UserError(f"{path} is empty: expected a header row `id,lower,upper,size`")
    header = tuple(field.strip().lower() for field in records[0])
    missing = [name for name in REQUIRED if name not in header]
    if missing:
        raise UserError(f"{path}: the header lacks the column(s) {', '.join(missing)}; a "
                        "MiniMalloc problem has the header `id,lower,upper,size`")
    unknown = [name for name in header if name not in REQUIRED + OPTIONAL]
    if unknown:
        raise UserError(f"{path}: unsupported column(s) {', '.join(map(repr, unknown))}; the "
                        f"columns are {', '.join(REQUIRED + OPTIONAL)}")
    if len(set(header)) != len(header):
        raise UserError(f"{path}: a column name appears twice in the header")
    where = {name: header.index(name) for name in header}
    buffers: list[Buffer] = []
    rows: list[tuple[str, ...]] = []
    for line, record in enumerate(records[1:], start=2):
        if len(record) != len(header):
            raise UserError(f"{path}, line {line}: {len(record)} fields for {len(header)} "
                            "columns")
        fields = tuple(field.strip() for field in record)
        identifier = fields[where["id"]]
        if not identifier:
            raise UserError(f"{path}, line {line}: the id is empty")
        values = {name: _integer(fields[where[name]], name, line, path)
                  for name in ("lower", "upper", "size")}
        alignment = _integer(fields[where["alignment"]], "alignment", line, path) \
            if "alignment" in where else 1
        buffers.append(Buffer(identifier, values["lower"], values["upper"], values["size"],
                              alignment))
        # An offset column already present (a solution fed back in) is replaced on output.
        rows.append(tuple(f for i, f in enumerate(fields) if i != where.get("offset", -1)))
    validate_buffers(buffers, what=f"{path}: buffer")
    kept = tuple(name for name in header if name != "offset")
    return CsvProblem(kept, tuple(rows), tuple(buffers))


def read_csv(path: str | Path) -> CsvProblem:
    """Read and parse a problem file (UserError when unreadable or malformed)."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"cannot read {str(path)!r}: {error}") from None
    return parse_csv(text, str(path))


def _write(rows: Sequence[Sequence[str]]) -> str:
    out = io.StringIO()
    writer = _csv.writer(out, lineterminator="\n")
    writer.writerows(rows)
    return out.getvalue()


def format_solution(problem: CsvProblem, offsets: Sequence[int]) -> str:
    """The input rows with an `offset` column added, as CSV text."""
    return _write([(*problem.header, "offset"),
                   *((*row, str(offset)) for row, offset in zip(problem.rows, offsets,
                                                                 strict=True))])


def format_problem(buffers: Sequence[Buffer]) -> str:
    """Buffers as a problem CSV (the alignment column only when some buffer needs it)."""
    aligned = any(b.alignment != 1 for b in buffers)
    header = ("id", "lower", "upper", "size", *(("alignment",) if aligned else ()))
    return _write([header, *((b.id, str(b.lower), str(b.upper), str(b.size),
                              *((str(b.alignment),) if aligned else ())) for b in buffers)])
