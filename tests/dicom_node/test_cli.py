"""``python -m dicom_node``: every command has --help; wrap-kspace writes valid Raw Data files; jobs/retry."""

from __future__ import annotations

import subprocess
import sys

import h5py
import numpy as np
import pydicom
import pytest
import yaml

from serving.dicom import decode_kspace
from tests.conftest import ROOT
from tests.dicom_node.data import ellipse_volume, mr_series, undersampled_kspace


def run(*args, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dicom_node", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


def test_every_command_has_help():
    out = run("--help")
    assert out.returncode == 0
    for cmd in ("serve", "jobs", "retry", "wrap-kspace"):
        assert cmd in out.stdout
        r = run(cmd, "--help")
        assert r.returncode == 0 and "Usage" in r.stdout, (cmd, r.stderr)


def test_wrap_kspace_fastmri_with_retrospective_undersampling_and_template(tmp_path):
    k, _ = undersampled_kspace(3, 2, 32, 24, acceleration=1)
    with h5py.File(tmp_path / "file.h5", "w") as f:
        f["kspace"] = k
        f.attrs["acquisition"] = "AXFLAIR"
    tpl = mr_series(ellipse_volume(1, 16, 16))[0]
    tpl.save_as(tmp_path / "tpl.dcm", enforce_file_format=True)
    r = run("wrap-kspace", tmp_path / "file.h5", "--out", tmp_path / "out", "--acceleration", 4, "--per-volume",
            "--template", tmp_path / "tpl.dcm")
    assert r.returncode == 0, r.stderr
    assert "1 Raw Data Storage instance(s)" in r.stdout and "contrast FLAIR" in r.stdout
    (f,) = sorted((tmp_path / "out").glob("*.dcm"))
    ds = pydicom.dcmread(f)
    assert ds.PatientID == tpl.PatientID and ds.StudyInstanceUID == tpl.StudyInstanceUID
    kv = decode_kspace([ds])
    assert kv.contrast == "FLAIR" and kv.phase_encoding_axis == -1  # fastMRI: masks act on columns
    assert kv.mask.shape == (32, 24) and np.all(kv.mask.any(axis=0) == kv.mask.all(axis=0))  # column mask
    np.testing.assert_allclose(kv.kspace, k * kv.mask)


def test_wrap_kspace_errors_are_clear(tmp_path):
    np.save(tmp_path / "bad.npy", np.ones((4, 4)))
    r = run("wrap-kspace", tmp_path / "bad.npy", "--out", tmp_path / "o")
    assert r.returncode == 2 and "kspace must be complex" in r.stderr


@pytest.fixture
def config(tmp_path):
    cfg = yaml.safe_load((ROOT / "configs" / "dicom_node.yaml").read_text())
    cfg["storage_dir"] = str(tmp_path / "store")
    p = tmp_path / "node.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_jobs_and_retry_on_an_empty_queue(config):
    r = run("jobs", "--config", config)
    assert r.returncode == 0 and "JOB" in r.stdout and "no jobs" in r.stdout
    r = run("jobs", "--config", config, "--state", "sideways")
    assert r.returncode != 0 and "expected one of" in r.stderr
    r = run("retry", "42", "--config", config)
    assert r.returncode == 1 and "no job 42" in r.stderr


def test_config_errors_exit_2_with_the_key(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("storage_dir: x\ndestinations: {}\nroutes: []\n")
    r = run("jobs", "--config", p)
    assert r.returncode == 2 and "error: destinations: define at least one destination" in r.stderr


def test_serve_refuses_a_dicomweb_listener_without_a_token(config):
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("MRI_API_TOKENS")}
    r = subprocess.run([sys.executable, "-m", "dicom_node", "serve", "--config", str(config), "--port", "0",
                        "--dicomweb-port", "0"], capture_output=True, text=True, cwd=ROOT, timeout=120, env=env)
    assert r.returncode == 2 and "error: dicomweb.auth: the DICOMweb listener is on" in r.stderr
