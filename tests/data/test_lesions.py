"""Lesions of the phantom: tissue values through the signal equations, geometry, determinism, config.

The image checks use pixels that are mostly one tissue (lesion or normal) of a small data set whose every
subject has a lesion (lesion_fraction=1), at 1.5 mm (160 x 160 over 240 mm), so the checks can fail when a
lesion tissue gets implausible relaxation times or is not put into the image.
"""

from __future__ import annotations

import numpy as np
import pytest

from mrcore.data.lesions import LESION_PROPERTIES, LESION_TISSUES, apply_lesions, lesion_arrays
from mrcore.data.phantom import (
    PhantomConfig,
    PhantomSource,
    lesion_sequence_signals,
    sequence_signals,
    subject_protocol,
)
from mrcore.data.sites import get_site
from mrcore.data.tissues import TISSUES, tissue_properties

CFG = dict(sites=("hospital-a", "hospital-b"), subjects_per_site=2, slices_per_subject=10, matrix=(160, 160),
           lesion_fraction=1.0)
NEC, TUM, OED = range(3)
GM, WM, CSF = (TISSUES.index(t) for t in ("gm", "wm", "csf"))


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> PhantomSource:
    return PhantomSource(PhantomConfig(**CFG, cache_dir=tmp_path_factory.mktemp("mrdata")), progress=False)


@pytest.mark.parametrize("field", [1.5, 3.0])
def test_relaxation_times_are_pathological(field):
    """Oedema and tumour: T1 and T2 longer than GM and WM; necrosis close to CSF (longer than all tissue)."""
    normal = tissue_properties(field)
    les = LESION_PROPERTIES[field]
    for name in ("oedema", "tumour"):
        assert les[name].t1_ms > normal["gm"].t1_ms > normal["wm"].t1_ms
        assert les[name].t2_ms > normal["gm"].t2_ms
    assert les["necrosis"].t2_ms > 3 * les["oedema"].t2_ms and les["necrosis"].t1_ms > les["oedema"].t1_ms
    pd, t1, t2 = lesion_arrays(field)
    assert pd.shape == t1.shape == t2.shape == (len(LESION_TISSUES),) and np.all(pd <= 1)


@pytest.mark.parametrize("site", ["hospital-a", "hospital-b", "hospital-c", "hospital-d"])
def test_lesion_contrast_per_sequence(site):
    """The signal equations give the contrasts of real gliomas: oedema bright on T2w and FLAIR (above GM, the
    brightest normal parenchyma, by >= 1.3 on FLAIR), dark on T1w (below WM); necrosis dark on FLAIR next to oedema."""
    protocol = get_site(site)
    normal = dict(zip(protocol.contrasts, sequence_signals(protocol)))
    les = dict(zip(protocol.contrasts, lesion_sequence_signals(protocol)))
    assert les["T2w"][OED] > normal["T2w"][GM] * 1.3
    assert les["FLAIR"][OED] > normal["FLAIR"][GM] * 1.3
    assert les["FLAIR"][TUM] > normal["FLAIR"][GM] * 1.2
    assert les["T1w"][OED] < normal["T1w"][WM]
    assert les["FLAIR"][NEC] < les["FLAIR"][OED]


def test_apply_lesions_conserves_tissue():
    rng = np.random.default_rng(0)
    fr = rng.random((len(TISSUES), 5, 7)).astype(np.float32)
    fr /= fr.sum(0, keepdims=True) * 1.1
    parts = rng.random((3, 5, 7)).astype(np.float32)
    parts /= parts.sum(0, keepdims=True) * 1.2
    tissues, lesions = apply_lesions(fr, parts)
    np.testing.assert_allclose(tissues.sum(0) + lesions.sum(0), fr.sum(0), rtol=1e-5)
    assert tissues.min() >= -1e-6 and lesions.min() >= 0
    np.testing.assert_array_equal(tissues[TISSUES.index("fat")], fr[TISSUES.index("fat")])  # never outside the brain


def _pure(source, site, contrast):
    """Mean noisy image value over pixels that are >= 85 % one lesion tissue / normal tissue, over all slices."""
    vals: dict[str, list] = {k: [] for k in ("oedema", "tumour", "gm", "wm")}
    for i in range(source.num_slices(site)):
        tissues, lesions = source.tissue_and_lesion_maps(site, i)
        img = source.image(site, i, contrast)
        vals["oedema"].append(img[lesions[OED] >= 0.85])
        vals["tumour"].append(img[lesions[TUM] >= 0.85])
        vals["gm"].append(img[tissues[GM] >= 0.85])
        vals["wm"].append(img[tissues[WM] >= 0.85])
    out = {}
    for k, v in vals.items():
        v = np.concatenate(v)
        out[k] = (float(v.mean()) if v.size else float("nan"), int(v.size))
    return out


@pytest.mark.parametrize("site", ["hospital-a", "hospital-b"])
def test_lesions_in_images(source, site):
    """Every subject carries a lesion; its oedema is FLAIR- and T2w-bright and T1w-dark in the rendered images."""
    lesion_pixels = [int((source.lesion_maps(site, i).sum(0) > 0.5).sum()) for i in range(source.num_slices(site))]
    per_subject = np.add.reduceat(lesion_pixels, [0, CFG["slices_per_subject"]])
    assert np.all(per_subject > 50), per_subject
    flair, t2, t1 = (_pure(source, site, c) for c in ("FLAIR", "T2w", "T1w"))
    assert flair["oedema"][1] >= 20, "too few pure oedema pixels"
    assert flair["oedema"][0] > 1.3 * flair["gm"][0]
    assert t2["oedema"][0] > 1.3 * t2["gm"][0]
    assert t1["oedema"][0] < t1["wm"][0]


def test_deterministic_and_configurable(tmp_path):
    base = dict(sites=("hospital-a",), subjects_per_site=3, slices_per_subject=4, matrix=(64, 64), cache_dir=None)
    a = PhantomSource(PhantomConfig(**base, lesion_fraction=1.0), progress=False).site_data("hospital-a")
    b = PhantomSource(PhantomConfig(**base, lesion_fraction=1.0), progress=False).site_data("hospital-a")
    none = PhantomSource(PhantomConfig(**base, lesion_fraction=0.0), progress=False)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(none.site_data("hospital-a")))
    assert all(none.lesion_maps("hospital-a", i).max() == 0 for i in range(12))
    other_seed = PhantomSource(PhantomConfig(**base, lesion_fraction=1.0, seed=1), progress=False)
    assert not np.array_equal(np.asarray(a), np.asarray(other_seed.site_data("hospital-a")))
    assert PhantomConfig().lesion_fraction > 0  # on by default
    with pytest.raises(ValueError, match="lesion_fraction"):
        PhantomConfig(lesion_fraction=1.5)
    with pytest.raises(ValueError, match="sequence_jitter"):
        PhantomConfig(sequence_jitter=0.7)


def test_skull_strip_and_jitter():
    base = dict(sites=("hospital-c",), subjects_per_site=4, slices_per_subject=2, matrix=(64, 64), cache_dir=None)
    src = PhantomSource(PhantomConfig(**base, skull_strip_fraction=1.0), progress=False)
    fat = TISSUES.index("fat")
    assert all(src.tissue_maps("hospital-c", i)[fat].max() == 0 for i in range(8))
    cfg = PhantomConfig(**base, sequence_jitter=0.2)
    protos = [subject_protocol(cfg, "hospital-c", s) for s in range(4)]
    trs = {p.sequences["T2w"].tr_ms for p in protos}
    assert len(trs) == 4 and all(4800 <= t <= 7200 for t in trs)
    for p in protos:  # FLAIR keeps nulling CSF at the jittered TR
        assert p.sequences["FLAIR"].ti_ms != get_site("hospital-c").sequences["FLAIR"].ti_ms
