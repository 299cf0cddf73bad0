"""IndexedFileSource: the per-site slice index shared by the raw-data readers, with in-memory files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from mrcore.data.base import KSpaceSlice
from mrcore.data.readers.indexed import IndexedFileSource, rss
from mrcore.fft import ifft2c


@dataclass(frozen=True)
class _Mem:
    site: str
    subject: str
    contrast: str
    path: Path
    num_slices: int
    data: np.ndarray  # complex64 [slices, coils, ky, kx]


class _MemSource(IndexedFileSource[_Mem]):
    _format_name = "in-memory"

    def __init__(self, files: list[_Mem]) -> None:
        self._index_files(files)

    def _read_kspace(self, f: _Mem, s: int) -> np.ndarray:
        return f.data[s]


def _file(site: str, subject: str, contrast: str, n: int, seed: int) -> _Mem:
    rng = np.random.default_rng(seed)
    k = (rng.standard_normal((n, 2, 6, 4)) + 1j * rng.standard_normal((n, 2, 6, 4))).astype(np.complex64)
    return _Mem(site, subject, contrast, Path(f"{subject}.h5"), n, k)


def test_index_order_contrasts_and_reading():
    a, b, c = _file("s2", "a", "FLAIR", 2, 0), _file("s1", "b", "T2w", 1, 1), _file("s2", "c", "T1w", 1, 2)
    src = _MemSource([a, b, c])
    assert src.sites == ("s1", "s2")
    assert src.contrasts("s2") == ("T1w", "FLAIR")  # CONTRASTS order, not file order
    assert src.num_slices("s2") == 3 and src.num_slices("s1") == 1
    assert [src.subject("s2", i) for i in range(3)] == ["a", "a", "c"]  # files in the order given
    assert [src.slice_contrast("s2", i) for i in range(3)] == ["FLAIR", "FLAIR", "T1w"]
    assert src.path("s2", 2) == Path("c.h5")
    got = src.kspace("s2", 1, "FLAIR", num_coils=5)
    assert isinstance(got, KSpaceSlice) and got.maps is None and (got.site, got.subject) == ("s2", "a")
    np.testing.assert_array_equal(got.kspace, a.data[1])
    np.testing.assert_array_equal(got.target, rss(ifft2c(a.data[1])))
    np.testing.assert_array_equal(src.image("s2", 1, "FLAIR"), got.target)


def test_errors_name_the_format_and_class():
    src = _MemSource([_file("s", "a", "PD", 1, 0), _file("s", "b", "T2w", 1, 1)])
    with pytest.raises(ValueError, match=r"in-memory files hold one contrast each; .* _MemSource\(\.\.\., contrasts="):
        src.image("s", 0, "T2w")
    with pytest.raises(ValueError, match="out of range"):
        src.kspace("s", 2, "PD")
    with pytest.raises(ValueError, match="unknown site"):
        src.num_slices("t")
    with pytest.raises(TypeError):
        IndexedFileSource()  # abstract: _read_kspace, and nothing to index
