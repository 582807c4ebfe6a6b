"""Per-item isolation for every stage that loops over items (videos, clips, batches).

An exception nobody anticipated while handling one item (a bug, a library surprise) must not kill a
stage that has hundreds of other items to do: `run_item` turns it into an `ItemError` whose reason is
`internal error: <Type>: <message>`. Stages count these apart from ordinary bad inputs (so a bug stays
visible in the report and the summary table) and still fail, with one sentence, when too many items
went wrong (`check_bad_fraction`). What is not the item's fault stays fatal: a UserError (e.g. a full
disk, components.io.disk_errors), KeyboardInterrupt, SystemExit, and a killed worker (Ray retries those).
"""

from __future__ import annotations

import logging
import traceback
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from components.errors import UserError

log = logging.getLogger(__name__)

INTERNAL_ERROR = "internal error"


@dataclass(frozen=True)
class ItemError:
    """One item that raised an unanticipated exception; `reason` is what reports show."""

    item: str
    reason: str
    traceback: str

    def as_dict(self) -> dict[str, str]:
        return {"path": self.item, "reason": self.reason}


def internal_error_reason(exc: BaseException) -> str:
    """`internal error: <Type>: <first line of the message>` (one line, for reports and tables)."""
    lines = str(exc).strip().splitlines()
    return f"{INTERNAL_ERROR}: {type(exc).__name__}: {lines[0] if lines else '(no message)'}"


def is_internal(reason: str) -> bool:
    return reason.startswith(INTERNAL_ERROR + ":")


def run_item(fn: Callable[..., Any], item: str, *args: Any, **kwargs: Any) -> Any:
    """`fn(*args, **kwargs)`, or an ItemError when it raises an unanticipated exception.

    Runs where the work runs (inside the Ray task or actor), so the worker survives and the driver
    gets a plain result back. One log line names the item; the traceback goes to the stage's report.
    """
    try:
        return fn(*args, **kwargs)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - the point: any exception of one item is that item's skip
        tb = traceback.format_exc()
        reason = internal_error_reason(exc)
        log.warning("%s: %s (skipped; traceback in the stage's report)", item, reason)
        return ItemError(item, reason, tb)


def item_errors(results: Iterable[Any]) -> list[ItemError]:
    return [r for r in results if isinstance(r, ItemError)]


def check_bad_fraction(stage: str, bad: int, total: int, limit: float, limit_name: str, internal: int,
                       where: str, noun: str = "items") -> None:
    """One UserError sentence when more than `limit` of `total` items were skipped."""
    fraction = bad / max(total, 1)
    if fraction > limit:
        bugs = f", {internal} of them internal errors (bugs: please report them)" if internal else ""
        raise UserError(f"{stage}: {bad} of {total} {noun} were skipped ({fraction:.1%}{bugs}), more than "
                        f"{limit_name} = {limit:.1%}; see {where} for each reason")
