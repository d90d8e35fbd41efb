"""Log lines that say what is true: ignite's start-of-run line on a fresh run.

Ignite logs ``Engine run resuming from iteration 0, epoch 0 until N epochs`` whenever ``state.max_epochs`` is set
before ``run()``, which MONAI's workflows always do, so every fresh training and every validation round reads as a
resume. :class:`FreshRunFilter` rewrites that line to ``Engine run starting at iteration 0, ...`` when the iteration
is 0; a real resume (iteration > 0) keeps ignite's words.
"""

from __future__ import annotations

import logging
import re

__all__ = ["FreshRunFilter", "install_fresh_run_filter"]

_RESUMING_AT_ZERO = re.compile(r"^Engine run resuming from iteration 0,")


class FreshRunFilter(logging.Filter):
    """Rewrites ignite's ``Engine run resuming from iteration 0, ...`` to ``Engine run starting at iteration 0,
    ...``; passes every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("ignite.") and isinstance(record.msg, str) and not record.args:
            record.msg = _RESUMING_AT_ZERO.sub("Engine run starting at iteration 0,", record.msg)
        return True


def install_fresh_run_filter() -> None:
    """Add one :class:`FreshRunFilter` to each handler of the root logger (ignite's engine loggers propagate there;
    a logger's own filters would not see its children's records). Idempotent."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, FreshRunFilter) for f in handler.filters):
            handler.addFilter(FreshRunFilter())
