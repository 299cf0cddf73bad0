"""Signal equations, the tissue table and the site protocols (pure functions, no images)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mrcore.data.base import CONTRASTS
from mrcore.data.phantom import sequence_signals
from mrcore.data.signal import flair_null_ti, inversion_recovery, spin_echo
from mrcore.data.sites import (
    DEFAULT_SITE_NAMES,
    DEFAULT_SITES,
    SITE_NAMES,
    SequenceParams,
    SiteProtocol,
    get_site,
)
from mrcore.data.tissues import FIELD_STRENGTHS, TISSUES, tissue_arrays, tissue_properties

CSF, GM, WM = (TISSUES.index(t) for t in ("csf", "gm", "wm"))


def test_spin_echo_hand_computed():
    # (1 - e^-0.5) e^-0.1, by hand
    assert spin_echo(1.0, 1000.0, 100.0, tr=500.0, te=10.0) == pytest.approx(0.35602578194193313, rel=1e-12)
    out = spin_echo(np.array([1.0, 0.5]), 1000.0, 100.0, tr=500.0, te=10.0)
    np.testing.assert_allclose(out, [0.35602578194193313, 0.17801289097096657], rtol=1e-12)
    # very long TR and zero TE give the proton density
    assert spin_echo(0.7, 100.0, 50.0, tr=1e6, te=0.0) == pytest.approx(0.7)


def test_inversion_recovery_hand_computed():
    # 0.8 |1 - 2 e^-0.5 + e^-2| e^-0.25 (Mz is negative here: magnitude)
    got = inversion_recovery(0.8, 1000.0, 80.0, tr=2000.0, te=20.0, ti=500.0)
    assert got == pytest.approx(0.048426478279008166, rel=1e-12)


def test_flair_null_ti_nulls_the_tissue():
    assert flair_null_ti(4000.0, 9000.0) == pytest.approx(2371.7624865727926, rel=1e-12)
    assert flair_null_ti(1000.0, 1e7) == pytest.approx(1000.0 * math.log(2.0), rel=1e-9)
    ti = flair_null_ti(4300.0, 9000.0)
    assert inversion_recovery(1.0, 4300.0, 2000.0, 9000.0, 100.0, ti) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize(
    "call, field",
    [
        (lambda: spin_echo(1.0, 0.0, 100.0, 500.0, 10.0), "t1"),
        (lambda: spin_echo(1.0, 1000.0, -1.0, 500.0, 10.0), "t2"),
        (lambda: spin_echo(-0.1, 1000.0, 100.0, 500.0, 10.0), "pd"),
        (lambda: spin_echo(1.0, 1000.0, 100.0, 500.0, 600.0), "te"),
        (lambda: spin_echo(1.0, 1000.0, 100.0, 0.0, 10.0), "tr"),
        (lambda: inversion_recovery(1.0, 1000.0, 100.0, 2000.0, 10.0, 2500.0), "ti"),
        (lambda: flair_null_ti(0.0, 9000.0), "t1_csf"),
    ],
)
def test_signal_validation(call, field):
    with pytest.raises(ValueError, match=field):
        call()


def test_tissue_table():
    assert TISSUES == ("csf", "gm", "wm", "fat", "muscle", "bone")
    for field in FIELD_STRENGTHS:
        pd, t1, t2 = tissue_arrays(field)
        assert pd.shape == t1.shape == t2.shape == (len(TISSUES),)
        assert np.all(pd >= 0) and np.all(t1 > 0) and np.all(t2 > 0)
        assert t1[CSF] > t1[GM] > t1[WM]  # grey matter relaxes more slowly than white matter
        assert t2[CSF] > t2[GM] > t2[WM]
        assert pd[CSF] > pd[GM] > pd[WM]
    # T1 lengthens with field strength for brain tissue
    assert tissue_properties(3.0)["wm"].t1_ms > tissue_properties(1.5)["wm"].t1_ms
    assert tissue_properties(3.0)["gm"].t1_ms > tissue_properties(1.5)["gm"].t1_ms
    with pytest.raises(ValueError, match="field_strength_t"):
        tissue_properties(7.0)


def test_default_sites_table():
    assert len(SITE_NAMES) == 8 and SITE_NAMES[0] == "hospital-a"
    assert DEFAULT_SITE_NAMES == ("hospital-a", "hospital-b", "hospital-c", "hospital-d")
    assert {get_site(s).field_strength_t for s in DEFAULT_SITE_NAMES} == {1.5, 3.0}
    assert {get_site(s).resolution_fraction for s in SITE_NAMES} == {1.0, 0.85, 0.7}
    assert len({get_site(s).noise_sigma for s in SITE_NAMES}) == 8
    for site in DEFAULT_SITES.values():
        assert site.contrasts == CONTRASTS
        t1_csf = tissue_properties(site.field_strength_t)["csf"].t1_ms
        flair = site.sequences["FLAIR"]
        assert flair.kind == "IR"
        assert abs(flair.ti_ms - flair_null_ti(t1_csf, flair.tr_ms)) <= 0.5  # nulls CSF at this field


@pytest.mark.parametrize("name", SITE_NAMES)
def test_pure_tissue_contrast_of_every_site(name):
    s = dict(zip(get_site(name).contrasts, sequence_signals(get_site(name))))
    assert s["T1w"][WM] > s["T1w"][GM] > s["T1w"][CSF]
    assert s["T2w"][CSF] > s["T2w"][GM] > s["T2w"][WM]
    assert s["PD"][CSF] >= s["PD"][GM] > s["PD"][WM]
    assert s["FLAIR"][CSF] < 1e-3 and s["FLAIR"][GM] > s["FLAIR"][WM]


def test_get_site_lists_known_names():
    with pytest.raises(ValueError, match="hospital-a"):
        get_site("hospital-z")


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(kind="GRE", tr_ms=500.0, te_ms=10.0), "kind"),
        (dict(kind="SE", tr_ms=-1.0, te_ms=10.0), "tr_ms"),
        (dict(kind="SE", tr_ms=500.0, te_ms=600.0), "te_ms"),
        (dict(kind="IR", tr_ms=5000.0, te_ms=10.0), "ti_ms"),
        (dict(kind="IR", tr_ms=5000.0, te_ms=10.0, ti_ms=6000.0), "ti_ms"),
        (dict(kind="SE", tr_ms=500.0, te_ms=10.0, ti_ms=100.0), "ti_ms"),
    ],
)
def test_sequence_validation(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SequenceParams(**kwargs)


def test_site_protocol_validation():
    seqs = {"T1w": SequenceParams("SE", 500.0, 10.0)}
    ok = SiteProtocol("x", 3.0, seqs, 0.01, 0.1, 1.0)
    assert ok.contrasts == ("T1w",)
    hash(ok)  # frozen and hashable despite the mapping field
    with pytest.raises(ValueError, match="field_strength_t"):
        SiteProtocol("x", 2.0, seqs, 0.01, 0.1, 1.0)
    with pytest.raises(ValueError, match="contrast"):
        SiteProtocol("x", 3.0, {"DWI": SequenceParams("SE", 500.0, 10.0)}, 0.01, 0.1, 1.0)
    with pytest.raises(ValueError, match="noise_sigma"):
        SiteProtocol("x", 3.0, seqs, -0.01, 0.1, 1.0)
    with pytest.raises(ValueError, match="resolution_fraction"):
        SiteProtocol("x", 3.0, seqs, 0.01, 0.1, 1.2)
