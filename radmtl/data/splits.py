"""Training/validation splits that depend only on the case ids, the fraction and the seed."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from radmtl.data.discovery import Case


def split_cases(cases: Sequence[Case], val_fraction: float, seed: int) -> tuple[list[Case], list[Case]]:
    """Split cases into training and validation, reproducibly.

    The draw is made over the case ids in sorted order, so the split depends only on the set of
    ids, the fraction and the seed, not on the order ``cases`` came in. Both lists keep the
    input order.

    Args:
        cases: the cases to split.
        val_fraction: share for validation, in [0, 1). When > 0 and there are at least 2
            cases, validation gets at least 1 case and training keeps at least 1.
        seed: random seed.

    Returns:
        ``(training, validation)``.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    cases = list(cases)
    n = len(cases)
    ids = [c.case_id for c in cases]
    if len(set(ids)) != n:
        raise ValueError("split_cases: case ids must be unique")
    n_val = int(round(n * val_fraction))
    if val_fraction > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    elif n < 2:
        n_val = 0
    order = sorted(ids)
    picked = np.random.default_rng(seed).permutation(n)[:n_val]
    val_ids = {order[i] for i in picked}
    training = [c for c in cases if c.case_id not in val_ids]
    validation = [c for c in cases if c.case_id in val_ids]
    return training, validation


def stratified_split(cases: Sequence[Case], val_fraction: float, seed: int) -> tuple[list[Case], list[Case]]:
    """:func:`split_cases` within each kind of supervision (sCT+seg, sCT only, seg only), so the
    validation set has cases of every kind the training set has (in proportion)."""
    kinds: dict[tuple[str, ...], list[Case]] = {}
    for case in cases:
        kinds.setdefault(case.tasks, []).append(case)
    val_ids: set[str] = set()
    for members in kinds.values():
        val_ids.update(c.case_id for c in split_cases(members, val_fraction, seed)[1])
    return [c for c in cases if c.case_id not in val_ids], [c for c in cases if c.case_id in val_ids]
