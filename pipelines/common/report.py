"""End-of-stage summary: one plain table on the console (it names the stage's log file when there is one)."""

from __future__ import annotations

import os
from typing import Any

from pipelines.common import console


def print_summary(title: str, rows: list[tuple[str, Any]]) -> None:
    def fmt(v: Any) -> str:
        if isinstance(v, bool):  # before int: True is an int
            return "yes" if v else "no"
        return f"{v:,.2f}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else str(v)

    log = console.log_path()
    if log is not None:
        rows = [*rows, ("log", os.path.relpath(log) if log.is_relative_to(os.getcwd()) else str(log))]
    cells = [(str(k), fmt(v)) for k, v in rows]
    kw = max(len(k) for k, _ in cells)
    vw = max(len(v) for _, v in cells)
    kw = max(kw, len(title) + 1)
    top = f"+- {title} " + "-" * (kw - len(title) - 1) + "+" + "-" * (vw + 2) + "+"  # the title in the frame
    line = "+" + "-" * (kw + 2) + "+" + "-" * (vw + 2) + "+"
    text = [top, *(f"| {k:<{kw}} | {v:>{vw}} |" for k, v in cells), line]
    console.say("\n".join(text))
