"""What every part of a benchmark run shares: where it keeps its files, how it tells its
progress (on stderr, so that stdout holds the report alone), and how it shows a figure."""

from __future__ import annotations

import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VAR = ROOT / "var" / "bench"


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def fmt(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:,.{digits}f}"
