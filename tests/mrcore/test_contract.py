"""The k-space / mask contract of mrcore.contract: what is accepted, how it is normalised, what each refusal says."""

import numpy as np
import pytest

from mrcore.contract import KSPACE_LAYOUT, ContractError, check_kspace, check_mask, kspace_layout, mask_per_slice


def _k(*shape, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex128)


def test_kspace_is_normalised_to_contiguous_complex64_with_a_slice_axis():
    k = _k(4, 32, 24)
    out = check_kspace(k)
    assert out.shape == (1, 4, 32, 24) and out.dtype == np.complex64 and out.flags.c_contiguous
    np.testing.assert_allclose(out[0], k, rtol=1e-6)
    strided = _k(2, 3, 32, 64)[..., ::2]
    assert check_kspace(strided).flags.c_contiguous
    ready = np.ascontiguousarray(_k(2, 3, 16, 16), dtype=np.complex64)
    assert check_kspace(ready) is ready  # nothing to do: no copy


@pytest.mark.parametrize("value, code, words", [
    (np.ones((2, 3, 16, 16), np.float32), "invalid_dtype", "must be complex64 [slices, coils, ky, kx]"),
    (np.ones((2, 3, 16, 16, 2), np.float32), "invalid_dtype", "trailing axis is not accepted"),
    ([[1j]], "invalid_dtype", "got list"),
    (np.ones((16, 16), np.complex64), "invalid_rank", "rank 3 or 4, got rank 2"),
    (np.ones((1, 1, 2, 16, 16), np.complex64), "invalid_rank", "got rank 5"),
    (np.ones((0, 3, 16, 16), np.complex64), "empty_array", "empty axis"),
    (np.ones((1, 3, 8, 16), np.complex64), "invalid_shape", "at least 16x16, got 8x16"),
    (np.full((1, 2, 16, 16), np.nan, np.complex64), "not_finite", "512 NaN/Inf values"),
    (np.zeros((1, 2, 16, 16), np.complex64), "invalid_input", "all zeros"),
])
def test_kspace_refusals_name_field_expectation_and_what_came(value, code, words):
    with pytest.raises(ContractError) as e:
        check_kspace(value)
    assert e.value.code == code and e.value.field == "kspace" and words in str(e.value)
    assert e.value.expected and e.value.got
    assert isinstance(e.value, ValueError)


def test_an_empty_part_of_a_volume_may_be_all_zero():
    zeros = np.zeros((1, 2, 16, 16), np.complex64)
    assert check_kspace(zeros, require_samples=False).shape == (1, 2, 16, 16)
    with pytest.raises(ContractError, match="KSpaceData holds 1 NaN"):
        bad = zeros.copy()
        bad[0, 0, 0, 0] = np.inf
        check_kspace(bad, field="KSpaceData", require_samples=False)


def test_layout_alone_does_not_look_at_values():
    k = np.full((3, 8, 8), np.nan, np.complex64)
    assert kspace_layout(k).shape == (1, 3, 8, 8)
    with pytest.raises(ContractError) as e:
        kspace_layout(np.ones((3, 8, 8)))
    assert e.value.expected == KSPACE_LAYOUT


def test_masks_of_every_accepted_shape():
    shape = (3, 2, 32, 24)
    rows = (np.arange(32) % 2 == 0)
    m = check_mask(rows, shape)  # lines over ky
    assert m.shape == (32, 24) and m.dtype == np.float32 and np.all(m[::2] == 1) and np.all(m[1::2] == 0)
    cols = (np.arange(24) % 3 == 0).astype(np.int64)
    m = check_mask(cols, shape)  # length kx != ky: lines over kx
    assert m.shape == (32, 24) and np.all(m[:, ::3] == 1) and np.all(m[:, 1::3] == 0)
    per_slice = np.ones((3, 32, 24), np.uint8)
    assert check_mask(per_slice, shape).shape == (3, 32, 24)
    assert mask_per_slice(check_mask(rows, shape), 3).shape == (3, 32, 24)
    square = check_mask(np.arange(16) < 8, (1, 1, 16, 16))  # ky == kx: the ky reading wins
    assert np.all(square[:8] == 1) and np.all(square[8:] == 0)


@pytest.mark.parametrize("mask, code, words", [
    (np.ones((32, 24), np.complex64), "invalid_dtype", "real (0/1) array"),
    (np.ones((0,), np.float32), "empty_array", "empty"),
    (np.ones((31, 24), np.float32), "shape_mismatch", "mask must be float32 [ky, kx] = [32, 24]"),
    (np.ones((2, 32, 24), np.float32), "shape_mismatch", "got float32 (2, 32, 24)"),
    (np.full((32, 24), 0.5, np.float32), "invalid_values", "only 0 and 1"),
    (np.full((32, 24), np.nan, np.float32), "invalid_values", "only 0 and 1"),
    (np.concatenate([np.ones((1, 32, 24)), np.zeros((2, 32, 24))]), "invalid_values", "samples nothing"),
])
def test_mask_refusals(mask, code, words):
    with pytest.raises(ContractError) as e:
        check_mask(mask, (3, 2, 32, 24))
    assert e.value.code == code and e.value.field == "mask" and words in str(e.value)
