"""The experiments CLI refuses unknown tables before it trains anything."""
from typer.testing import CliRunner

from tests.conftest import cli_text
from training.synthesis.experiments import TABLES, app


def test_unknown_table_is_refused_before_training(tmp_path):
    result = CliRunner().invoke(app, ["all", "-t", "compare", "-t", "bogus", "--runs-root", str(tmp_path)])
    assert result.exit_code == 2
    assert "unknown table(s) bogus" in result.output
    assert not any(tmp_path.iterdir())  # nothing was trained


def test_every_table_has_a_subcommand():
    names = {c.name for c in app.registered_commands}
    assert set(TABLES) <= names and "all" in names


def test_compare_seed_equal_to_the_configs_own_is_refused_before_training(tmp_path):
    result = CliRunner().invoke(app, ["compare", "--seed", "1", "--seed", "0", "--runs-root", str(tmp_path)])
    assert result.exit_code == 2
    assert "other than the configuration's own seed 0" in cli_text(result)
    assert not any(tmp_path.iterdir())
