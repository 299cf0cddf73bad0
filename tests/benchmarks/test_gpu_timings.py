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
