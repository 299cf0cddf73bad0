"""The README's / docs/api.md's curl examples (docs/api_examples.sh) run with the real curl binary against a real
uvicorn + Triton; the files they download are checked with numpy, nibabel, Pillow and pydicom."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import zipfile

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image

from serving.api.uploads import split_multipart_related
from tests.conftest import ROOT
from tests.serving.api_support import TOKEN, ApiServer, ensure_examples

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
SCRIPT = ROOT / "docs" / "api_examples.sh"


def _dicom_zip(path):
    with zipfile.ZipFile(path) as z:
        return [pydicom.dcmread(io.BytesIO(z.read(n))) for n in sorted(z.namelist())]


def test_docs_show_the_example_script_verbatim():
    doc = (ROOT / "docs" / "api.md").read_text()
    block = re.search(r"<!-- api_examples.sh -->\n```bash\n(.*?)```", doc, re.S)
    assert block, "docs/api.md must embed docs/api_examples.sh between <!-- api_examples.sh --> and a bash fence"
    assert block.group(1) == SCRIPT.read_text()


def test_curl_examples_run_against_the_real_server(triton_url, tmp_path):
    assert shutil.which("curl"), "the curl binary is needed (apt-get install curl)"
    examples = ensure_examples()
    out = tmp_path / "out"
    with ApiServer(triton_url, tmp_path / "server") as api:
        env = {**os.environ, "API": api.url, "EX": str(examples), "OUT": str(out), "MRI_API_TOKEN": TOKEN}
        run = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    hint = "" if (ROOT / "model_repository" / "synth_t1w_to_t2w").is_dir() else \
        " (the synthesis examples need synth_t1w_to_t2w in model_repository/)"
    assert run.returncode == 0, f"stdout:\n{run.stdout[-3000:]}\nstderr{hint}:\n{run.stderr[-3000:]}"
    assert '"status":"alive"' in run.stdout and '"status":"ready"' in run.stdout
    assert re.search(r"job [0-9a-f]{32}: succeeded", run.stdout)
    models = json.loads((out / "models.json").read_text())["models"]
    assert "recon_unrolled" in [m["name"] for m in models]
    assert json.loads((out / "recon_unrolled.json").read_text())["max_batch_size"] == 8
    assert "mri_api_requests_total" in (out / "metrics.txt").read_text()
    recon = np.load(out / "recon.npy")
    assert recon.shape == (2, 128, 128) and recon.dtype == np.float32
    assert nib.load(out / "recon.nii").shape == (128, 128, 2)
    assert Image.open(out / "recon.png").size == (256, 128)
    for name in ("recon_fastmri_dicom.zip", "recon_rawdata_dicom.zip"):
        datasets = _dicom_zip(out / name)
        assert len(datasets) == 2 and all(ds.Modality == "MR" and ds.Rows == 128 for ds in datasets)
    body = (out / "recon_mrd.multipart").read_bytes()
    boundary = body.split(b"\r\n", 1)[0][2:].decode()
    assert len(split_multipart_related(body, boundary)) == 2
    synth = _dicom_zip(out / "synth_t2w_dicom.zip")
    assert len(synth) == 4 and all("DERIVED" in list(ds.ImageType) for ds in synth)
    assert nib.load(out / "synth_t2w.nii").shape == (128, 128, 4)
    assert np.load(out / "job_recon.npy").shape == (24, 128, 128)
