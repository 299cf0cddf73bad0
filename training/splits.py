"""Subject-level data splits shared by the model families (never slices of one subject on two sides)."""

from __future__ import annotations

import numpy as np

from mrcore.data.base import SliceSource


def split_subjects(source: SliceSource, site: str, val_subjects: int, test_subjects: int = 0) -> dict[str, tuple[int, ...]]:
    """Slice indices of ``site`` by subject: the last ``test_subjects`` subjects are 'test', the
    ``val_subjects`` before them 'val', all others 'train'.

    Returns
    -------
    dict with keys 'train', 'val', 'test' -> tuple of slice indices (in source order).
    """
    subjects = source.subjects(site)
    if len(subjects) <= val_subjects + test_subjects:
        raise ValueError(
            f"site {site!r} has {len(subjects)} subjects; need more than val_subjects + test_subjects = "
            f"{val_subjects} + {test_subjects}"
        )
    cut = len(subjects) - test_subjects
    role = {s: "train" for s in subjects[:cut - val_subjects]}
    role.update({s: "val" for s in subjects[cut - val_subjects:cut]})
    role.update({s: "test" for s in subjects[cut:]})
    out: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for i in range(source.num_slices(site)):
        out[role[source.subject(site, i)]].append(i)
    return {k: tuple(v) for k, v in out.items()}


def spread(indices: tuple[int, ...], limit: int) -> tuple[int, ...]:
    """At most ``limit`` indices spread evenly over ``indices`` (0 = all)."""
    if limit <= 0 or len(indices) <= limit:
        return indices
    pick = np.linspace(0, len(indices) - 1, limit).round().astype(int)
    return tuple(indices[i] for i in pick)
