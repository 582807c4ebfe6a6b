"""End-of-stage summary: one plain table on stdout."""

from __future__ import annotations

from typing import Any


def print_summary(title: str, rows: list[tuple[str, Any]]) -> None:
    def fmt(v: Any) -> str:
        if isinstance(v, bool):  # before int: True is an int
            return "yes" if v else "no"
        return f"{v:,.2f}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else str(v)

    cells = [(str(k), fmt(v)) for k, v in rows]
    kw = max(len(k) for k, _ in cells)
    vw = max(len(v) for _, v in cells)
    line = "+" + "-" * (kw + 2) + "+" + "-" * (vw + 2) + "+"
    print(line)
    print(f"| {title:<{kw + vw + 3}} |")
    print(line)
    for k, v in cells:
        print(f"| {k:<{kw}} | {v:>{vw}} |")
    print(line, flush=True)
