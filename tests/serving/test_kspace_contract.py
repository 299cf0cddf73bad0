"""One k-space / mask contract, one verdict: the same bad input sent through every entry point.

Each row is refused by :mod:`mrcore.contract` with a field, a code and a message; the REST API (``.npy``/``.npz``
body and DICOM Raw Data body, over HTTP), the DICOM raw-data codec the node decodes C-STOREs with, the
``dicom-node wrap-kspace`` CLI and the Triton client must all refuse it with that same field, code and message.
Rows the DICOM private block cannot carry (it holds complex64 [slices, coils, ky, kx] only) skip that path.
"""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from typer.testing import CliRunner

from dicom_node.cli import app as dicom_node_cli
from mrcore.contract import ContractError, check_kspace, check_mask
from serving.client import TritonClient
from serving.dicom import DicomInputError, dataset_bytes, decode_kspace, encode_kspace
from serving.dicom.rawdata import KSPACE_GROUP, KSPACE_PRIVATE_CREATOR
from tests.conftest import cli_text, free_port
from tests.dicom_node.data import undersampled_kspace
from tests.serving.api_support import AUTH, ApiServer, npz_bytes

K, MASK = undersampled_kspace(2, 4, 32, 32)


def _nan(value):
    k = K.copy()
    k[0, 1, 2, 3] = value
    return k


#: name, kspace, mask, (field, code) of the verdict, whether a DICOM private block can carry the input
ROWS = [
    ("NaN in k-space", _nan(np.nan), MASK, ("kspace", "not_finite"), True),
    ("Inf in k-space", _nan(np.inf), MASK, ("kspace", "not_finite"), True),
    ("k-space all zeros", np.zeros_like(K), None, ("kspace", "invalid_input"), True),
    ("matrix below 16", np.ascontiguousarray(K[:, :, :8, :]), None, ("kspace", "invalid_shape"), True),
    ("mask not 0/1", K, np.full_like(MASK, 0.5), ("mask", "invalid_values"), True),
    ("mask samples nothing", K, np.zeros_like(MASK), ("mask", "invalid_values"), True),
    ("mask of another shape", K, np.ones((32, 31), np.float32), ("mask", "shape_mismatch"), True),
    ("real k-space", np.abs(K), None, ("kspace", "invalid_dtype"), False),
    ("k-space of rank 2", np.ascontiguousarray(K[0, 0]), None, ("kspace", "invalid_rank"), False),
]
IDS = [r[0] for r in ROWS]


def _verdict(kspace, mask) -> ContractError:
    """The contract's own refusal (the reference every entry point is compared with)."""
    with pytest.raises(ContractError) as e:
        k = check_kspace(kspace)
        if mask is not None:
            check_mask(mask, k.shape)
    return e.value


def _raw_data(kspace: np.ndarray, mask: np.ndarray | None):
    """Raw Data Storage instances (one per volume) whose private block carries ``kspace`` and ``mask`` as they
    are: a valid instance is encoded, then its sample fields are overwritten, as a faulty gateway would."""
    s, c, ky, kx = kspace.shape
    ds = encode_kspace(K[:s], MASK, per_slice=False)[0]
    block = ds.private_block(KSPACE_GROUP, KSPACE_PRIVATE_CREATOR)
    block[0x02].value = [s, c, ky, kx]
    block[0x04].value = kspace.astype("<c8").tobytes()
    block[0x07].value = [ky, kx]
    if mask is None:
        del ds[block.get_tag(0x05)]
        del ds[block.get_tag(0x06)]
    else:
        block[0x05].value = list(mask.shape)
        block[0x06].value = mask.astype("<f4").tobytes()
    return [ds]


@pytest.fixture(scope="module")
def http(triton_url, tmp_path_factory):
    with ApiServer(triton_url, tmp_path_factory.mktemp("contract-api")) as api, api.client(headers=AUTH) as c:
        yield c


@pytest.mark.parametrize("name, kspace, mask, verdict, dicom", ROWS, ids=IDS)
def test_the_contract_refuses_each_row(name, kspace, mask, verdict, dicom):
    e = _verdict(kspace, mask)
    assert (e.field, e.code) == verdict
    assert e.expected and e.got


@pytest.mark.parametrize("name, kspace, mask, verdict, dicom", ROWS, ids=IDS)
def test_rest_npz_body(http, name, kspace, mask, verdict, dicom):
    ref = _verdict(kspace, mask)
    arrays = {"kspace": kspace} if mask is None else {"kspace": kspace, "mask": mask}
    r = http.post("/v1/reconstruct", content=npz_bytes(**arrays))
    assert r.status_code == 422, r.text[:500]
    body = r.json()
    assert (body["field"], body["code"], body["error"]) == (ref.field, ref.code, str(ref))
    assert (body["expected"], body["got"]) == (ref.expected, ref.got)


@pytest.mark.parametrize("name, kspace, mask, verdict, dicom", [r for r in ROWS if r[4]],
                         ids=[r[0] for r in ROWS if r[4]])
def test_rest_dicom_raw_data_body(http, name, kspace, mask, verdict, dicom):
    ref = _verdict(kspace, mask)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for i, ds in enumerate(_raw_data(kspace, mask)):
            z.writestr(f"{i}.dcm", dataset_bytes(ds))
    r = http.post("/v1/reconstruct?input_format=dicom", content=buf.getvalue())
    assert r.status_code == 422, r.text[:500]
    body = r.json()
    assert (body["field"], body["code"], body["error"]) == (ref.field, ref.code, str(ref))


@pytest.mark.parametrize("name, kspace, mask, verdict, dicom", [r for r in ROWS if r[4]],
                         ids=[r[0] for r in ROWS if r[4]])
def test_dicom_raw_data_codec(name, kspace, mask, verdict, dicom):
    ref = _verdict(kspace, mask)
    with pytest.raises(DicomInputError) as e:
        decode_kspace(_raw_data(kspace, mask))
    assert e.value.contract is not None, str(e.value)
    assert (e.value.contract.field, e.value.contract.code) == (ref.field, ref.code)
    assert str(e.value).endswith(str(ref)) and e.value.kind in ("invalid", "mismatch")


@pytest.mark.parametrize("name, kspace, mask, verdict, dicom", ROWS, ids=IDS)
def test_wrap_kspace_cli(tmp_path, name, kspace, mask, verdict, dicom):
    ref = _verdict(kspace, mask)
    path = tmp_path / "input.npz"
    np.savez(path, **({"kspace": kspace} if mask is None else {"kspace": kspace, "mask": mask}))
    result = CliRunner().invoke(dicom_node_cli, ["wrap-kspace", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "error: " + " ".join(str(ref).split()) in cli_text(result)
    assert not (tmp_path / "out").exists()  # nothing half-written


@pytest.mark.parametrize("name, kspace, mask, verdict, dicom", ROWS, ids=IDS)
def test_triton_client(name, kspace, mask, verdict, dicom):
    ref = _verdict(kspace, mask)
    with TritonClient(f"127.0.0.1:{free_port()}") as client:  # refused before any request is sent
        with pytest.raises(ContractError) as e:
            client.reconstruct(kspace, mask)
    assert (e.value.field, e.value.code, str(e.value)) == (ref.field, ref.code, str(ref))
