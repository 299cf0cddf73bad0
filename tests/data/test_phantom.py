"""The multi-site phantom: physics, determinism, site differences, k-space, validation and the cache.

One small data set (2 sites x 2 subjects x 3 slices at 96 x 96) is generated once per session.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import mrcore.data.phantom as phantom
from mrcore.data.base import CONTRASTS, KSpaceSlice, SliceSource
from mrcore.data.phantom import PhantomConfig, PhantomSource
from mrcore.data.sites import get_site
from mrcore.data.tissues import TISSUES
from mrcore.fft import fft2c, ifft2c

SMALL = dict(sites=("hospital-a", "hospital-b"), subjects_per_site=2, slices_per_subject=3, matrix=(96, 96))
A3T, B15T = "hospital-a", "hospital-b"
CSF, GM, WM = (TISSUES.index(t) for t in ("csf", "gm", "wm"))


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mrdata")


@pytest.fixture(scope="module")
def source(cache_dir) -> PhantomSource:
    src = PhantomSource(PhantomConfig(**SMALL, cache_dir=cache_dir), progress=False)
    src.prepare()
    return src


def _tissue_means(source: PhantomSource, site: str, contrast: str, threshold: float = 0.85) -> dict[str, float]:
    """Mean noisy image value over the pixels that are mostly one tissue, pooled over every slice."""
    values = {t: [] for t in ("csf", "gm", "wm")}
    for i in range(source.num_slices(site)):
        maps = source.tissue_maps(site, i)
        img = source.image(site, i, contrast)
        for t in values:
            values[t].append(img[maps[TISSUES.index(t)] >= threshold])
    out = {}
    for t, v in values.items():
        v = np.concatenate(v)
        assert v.size >= 20, f"too few pure {t} pixels at {site}"
        out[t] = float(v.mean())
    return out


def test_interface(source):
    assert isinstance(source, SliceSource)
    assert source.sites == SMALL["sites"]
    assert source.contrasts(A3T) == CONTRASTS
    assert source.num_slices(A3T) == 6
    assert source.subject(A3T, 0) == "hospital-a-sub000"
    assert source.subject(B15T, 5) == "hospital-b-sub001"
    assert source.subjects(A3T) == ["hospital-a-sub000", "hospital-a-sub001"]
    img = source.image(A3T, 1, "T1w")
    assert img.shape == (96, 96) and img.dtype == np.float32 and np.all(img >= 0)
    maps = source.tissue_maps(A3T, 1)
    assert maps.shape == (len(TISSUES), 96, 96) and maps.dtype == np.float32
    assert maps.min() >= 0 and maps.sum(0).max() <= 1 + 1e-5
    data = source.site_data(A3T)
    assert data.shape == (6, 4, 96, 96) and data.dtype == np.float16 and isinstance(data, np.memmap)


@pytest.mark.parametrize("site", [A3T, B15T])
def test_tissue_contrast_ordering(source, site):
    t1 = _tissue_means(source, site, "T1w")
    assert t1["wm"] > t1["gm"] > t1["csf"]
    t2 = _tissue_means(source, site, "T2w")
    assert t2["csf"] > t2["gm"] > t2["wm"]
    pd = _tissue_means(source, site, "PD")
    assert pd["csf"] >= pd["gm"] > pd["wm"]
    flair = _tissue_means(source, site, "FLAIR")
    assert flair["gm"] > flair["wm"] > flair["csf"]
    assert flair["csf"] < 0.5 * flair["wm"]  # CSF nulled (what is left is noise floor and partial volume)


def test_deterministic_and_seed_dependent(source, tmp_path):
    other = PhantomSource(PhantomConfig(**SMALL, cache_dir=None), progress=False)  # fresh, in memory
    for site in source.sites:
        np.testing.assert_array_equal(np.asarray(source.site_data(site)), other.site_data(site))
    for contrast in CONTRASTS:
        np.testing.assert_array_equal(source.image(B15T, 4, contrast), other.image(B15T, 4, contrast))
        k1, k2 = source.kspace(B15T, 4, contrast, num_coils=4), other.kspace(B15T, 4, contrast, num_coils=4)
        np.testing.assert_array_equal(k1.kspace, k2.kspace)
        np.testing.assert_array_equal(k1.maps, k2.maps)
    # noise differs between slices and contrasts, and from image() to kspace()
    assert not np.array_equal(source.image(A3T, 0, "T1w"), source.image(A3T, 1, "T1w"))
    seeded = PhantomSource(replace(source.config, seed=1, sites=(A3T,), cache_dir=tmp_path), progress=False)
    assert not np.array_equal(np.asarray(seeded.site_data(A3T)), np.asarray(source.site_data(A3T)))
    assert not np.array_equal(seeded.image(A3T, 0, "T2w"), source.image(A3T, 0, "T2w"))


def test_cache_reload_identical(source, cache_dir):
    files = sorted(p.name for p in cache_dir.iterdir())
    assert len([f for f in files if f.endswith(".npy")]) == 2 and len([f for f in files if f.endswith(".json")]) == 2
    assert not [f for f in files if f.endswith(".tmp")]
    reloaded = PhantomSource(PhantomConfig(**SMALL, cache_dir=cache_dir), progress=False)

    def boom(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    mp = pytest.MonkeyPatch()
    mp.setattr(phantom, "_generate_site", boom)
    try:
        for site in source.sites:
            np.testing.assert_array_equal(np.asarray(reloaded.site_data(site)), np.asarray(source.site_data(site)))
        np.testing.assert_array_equal(reloaded.image(A3T, 2, "FLAIR"), source.image(A3T, 2, "FLAIR"))
    finally:
        mp.undo()


@pytest.mark.slow  # starts a fresh interpreter (a few seconds of imports)
def test_same_output_in_another_process(source, cache_dir):
    code = textwrap.dedent(
        f"""
        import hashlib
        from pathlib import Path
        from mrcore.data.phantom import PhantomConfig, PhantomSource
        src = PhantomSource(PhantomConfig(**{SMALL!r}, cache_dir=Path({str(cache_dir)!r})), progress=False)
        h = hashlib.sha256()
        h.update(src.image("hospital-b", 3, "PD").tobytes())
        h.update(src.kspace("hospital-b", 3, "PD", num_coils=2).kspace.tobytes())
        print(h.hexdigest())
        """
    )
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    h = hashlib.sha256()
    h.update(source.image("hospital-b", 3, "PD").tobytes())
    h.update(source.kspace("hospital-b", 3, "PD", num_coils=2).kspace.tobytes())
    assert out.stdout.strip() == h.hexdigest()


def test_sites_measurably_differ(source):
    # noise level from the background (air: no tissue at all); Rician background has E[m^2] = 2 sigma^2
    estimates = {}
    for site in source.sites:
        bg = []
        for i in range(source.num_slices(site)):
            air = source.tissue_maps(site, i).sum(0) == 0
            air[20:-20, 20:-20] = False  # stay clear of the head and its ringing
            bg.append(source.image(site, i, "T2w")[air])
        estimates[site] = float(np.sqrt(np.mean(np.concatenate(bg) ** 2) / 2))
        assert estimates[site] == pytest.approx(get_site(site).noise_sigma, rel=0.1)
    assert estimates[B15T] > 1.5 * estimates[A3T]
    # grey/white contrast differs with field strength and protocol
    ratio = {s: _tissue_means(source, s, "FLAIR")["gm"] / _tissue_means(source, s, "FLAIR")["wm"] for s in source.sites}
    assert abs(ratio[A3T] - ratio[B15T]) > 0.1
    wm_t1 = {s: _tissue_means(source, s, "T1w")["wm"] for s in source.sites}
    assert abs(wm_t1[A3T] - wm_t1[B15T]) > 0.2 * wm_t1[A3T]


@pytest.mark.parametrize("site", [A3T, B15T])
def test_kspace(source, site):
    ks = source.kspace(site, 2, "T2w", num_coils=6)
    assert isinstance(ks, KSpaceSlice)
    assert ks.kspace.shape == (6, 96, 96) and ks.kspace.dtype == np.complex64
    assert ks.maps.shape == (6, 96, 96) and ks.maps.dtype == np.complex64
    assert ks.target.shape == (96, 96) and ks.target.dtype == np.float32
    assert (ks.site, ks.subject, ks.contrast) == (site, f"{site}-sub000", "T2w")
    rss = np.sqrt((np.abs(ifft2c(ks.kspace)) ** 2).sum(0))
    np.testing.assert_allclose(ks.target, rss, rtol=1e-5, atol=1e-6)
    # noise per coil in the k-space corners is the site's sigma
    c = 12
    sigma = get_site(site).noise_sigma
    clean = source.clean_image(site, 2, "T2w")
    noise = ks.kspace - fft2c(ks.maps * clean)

    def corners(k):
        return np.concatenate([k[:, :c, :c], k[:, :c, -c:], k[:, -c:, :c], k[:, -c:, -c:]], axis=1)

    for part in (corners(noise).real, corners(noise).imag):
        assert part.std() == pytest.approx(sigma, rel=0.1)
    if get_site(site).resolution_fraction < 1:  # no object signal out there: the raw corners are noise
        assert corners(ks.kspace).real.std() == pytest.approx(sigma, rel=0.1)
        assert corners(ks.kspace).imag.std() == pytest.approx(sigma, rel=0.1)
    # the noise-free part: RSS of the coil images is the clean magnitude
    assert np.abs(ks.target - np.abs(clean))[np.abs(clean) > 0.2].mean() < 3 * sigma


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(sites=("hospital-zz",)), "sites"),
        (dict(sites=()), "sites"),
        (dict(sites=("hospital-a", "hospital-a")), "sites"),
        (dict(sites="hospital-a"), "sites"),
        (dict(seed=-1), "seed"),
        (dict(seed=1.5), "seed"),
        (dict(subjects_per_site=0), "subjects_per_site"),
        (dict(slices_per_subject=2.0), "slices_per_subject"),
        (dict(matrix=(8, 8)), "matrix"),
        (dict(matrix=(96,)), "matrix"),
        (dict(fov_mm=(0.0, 240.0)), "fov_mm"),
        (dict(fov_mm=(float("nan"), 240.0)), "fov_mm"),
        (dict(cache_dir=5), "cache_dir"),
    ],
)
def test_config_validation(kwargs, field):
    with pytest.raises(ValueError, match=field):
        PhantomConfig(**kwargs)


def test_unknown_site_lists_known_names():
    with pytest.raises(ValueError, match="hospital-h"):
        PhantomConfig(sites=("nowhere",))


def test_access_validation(source):
    with pytest.raises(ValueError, match="unknown site"):
        source.image("hospital-c", 0, "T1w")  # a real site, but not in this source
    with pytest.raises(ValueError, match="out of range"):
        source.image(A3T, 6, "T1w")
    with pytest.raises(ValueError, match="out of range"):
        source.kspace(A3T, -1, "T1w")
    with pytest.raises(ValueError, match="unknown contrast"):
        source.image(A3T, 0, "DWI")
    with pytest.raises(ValueError, match="num_coils"):
        source.kspace(A3T, 0, "T1w", num_coils=0)
    with pytest.raises(ValueError, match="config"):
        PhantomSource({"seed": 0})


def test_cache_write_is_atomic(source, tmp_path, monkeypatch):
    cfg = PhantomConfig(**{**SMALL, "sites": (B15T,)}, cache_dir=tmp_path)
    src = PhantomSource(cfg, progress=False)
    npy, sidecar = src.cache_paths(B15T)
    # leftovers of interrupted runs: a stray .tmp and one from a dead process on this host
    stray = npy.with_name(npy.name + ".tmp")
    stray.write_bytes(b"garbage")
    dead = npy.with_name(f"{npy.name}.{phantom._host()}.999999999.deadbeef.tmp")
    dead.write_bytes(b"garbage")

    # an interrupted generation leaves no cache entry behind
    def interrupted(config, site, out, progress):
        out[:2] = 1.0
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(phantom, "_generate_site", interrupted)
        with pytest.raises(KeyboardInterrupt):
            src.site_data(B15T)
    assert not npy.exists() and not sidecar.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([stray.name])  # dead process's file reaped

    fresh = PhantomSource(cfg, progress=False)
    np.testing.assert_array_equal(np.asarray(fresh.site_data(B15T)), np.asarray(source.site_data(B15T)))
    assert npy.exists() and sidecar.exists()
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".tmp" and p != stray]

    # a corrupt array (e.g. truncated by a full disk) is detected and regenerated
    npy.write_bytes(npy.read_bytes()[:1000])
    again = PhantomSource(cfg, progress=False)
    np.testing.assert_array_equal(np.asarray(again.site_data(B15T)), np.asarray(source.site_data(B15T)))
