"""Which labels train: the datalist's HQ/LQ items turned into the training sets each method needs."""

from __future__ import annotations

from collections.abc import Sequence

from custom.errors import OptionError

__all__ = ["LABEL_MODES", "supervised_items", "split_by_quality"]

LABEL_MODES = ("hq", "hq+lq", "clean")


def supervised_items(items: Sequence[dict], label_mode: str = "hq+lq") -> list[dict]:
    """Training items for plain supervised learning.

    Args:
        items: training items of a datalist (``image``, ``label``, ``label_clean``, ``quality``).
        label_mode: ``"hq"`` (H-Sup: HQ items only), ``"hq+lq"`` (HL-Sup: every item with the label it has,
            noisy for LQ) or ``"clean"`` (upper bound: every item with its clean label).

    Raises:
        ValueError: unknown mode (an :class:`~custom.errors.OptionError` naming ``--label_mode``), an empty result,
            or ``"clean"`` with items lacking ``label_clean``.
    """
    if label_mode not in LABEL_MODES:
        raise OptionError("label_mode", f"must be one of {LABEL_MODES}, got {label_mode!r}")
    if label_mode == "hq":
        out = [dict(i) for i in items if i.get("quality", "hq") == "hq"]
    elif label_mode == "hq+lq":
        out = [dict(i) for i in items]
    else:
        missing = [i.get("case_id", i["image"]) for i in items if "label_clean" not in i]
        if missing:
            raise ValueError(f"label_mode='clean' needs 'label_clean' for every item; missing for {missing[:5]}.")
        out = [{**i, "label": i["label_clean"]} for i in items]
    if not out:
        raise ValueError(f"no training items for label_mode={label_mode!r} (is there an HQ split in the datalist?).")
    return out


def split_by_quality(items: Sequence[dict]) -> tuple[list[dict], list[dict]]:
    """``(hq_items, lq_items)``; items without ``quality`` count as LQ (noisy) - the safe assumption."""
    hq = [dict(i) for i in items if i.get("quality") == "hq"]
    lq = [dict(i) for i in items if i.get("quality") != "hq"]
    return hq, lq
