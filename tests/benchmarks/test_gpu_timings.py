"""The GPU benchmark refuses to run without a GPU rather than write CPU numbers under a GPU title."""

from typer.testing import CliRunner

from benchmarks import gpu_timings


def test_without_a_gpu_it_measures_nothing_and_exits_2(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_timings.torch.cuda, "is_available", lambda: False)
    out = tmp_path / "gpu.md"
    result = CliRunner().invoke(gpu_timings.app, ["--out", str(out)])
    assert result.exit_code == 2
    assert "no CUDA GPU" in result.output
    assert not out.exists()


def test_a_repository_without_the_model_card_is_named(tmp_path):
    import pytest

    from benchmarks.common import family_from_card

    with pytest.raises(FileNotFoundError, match=r"no model card .*recon_unrolled.*--repo"):
        family_from_card(tmp_path, "recon_unrolled")
