"""Lint and types as part of `make test`: ruff (the rule set of pyproject.toml) on the whole tree, mypy on the
MRI core and both services, and a reason beside every silenced warning and every blind except."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SOURCES = ("mrcore", "training", "serving", "dicom_node", "benchmarks", "tests")
#: a noqa comment names its codes and then says why: the codes alone do not
NOQA_WITH_REASON = re.compile(r"#\s*noqa:\s*[A-Z]+[0-9]+\b(?:\s*,\s*[A-Z]+[0-9]+\b)*\s*[-(:–]?\s*\w")
BLIND_EXCEPT = re.compile(r"^\s*except\s*(\(?[^)]*\b(Exception|BaseException)\b[^)]*\)?)?\s*(as\s+\w+)?\s*:")


#: these two hold the patterns as strings (test data), not as code
_CHECKERS = ("tests/test_lint.py", "tests/test_layers.py")


def _python_files():
    for package in SOURCES:
        yield from (p for p in sorted((ROOT / package).rglob("*.py")) if str(p.relative_to(ROOT)) not in _CHECKERS)


def test_ruff_finds_nothing():
    result = subprocess.run([str(BIN / "ruff"), "check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]


@pytest.mark.slow
def test_mypy_finds_nothing():
    """mypy on the files of ``[tool.mypy]`` (mrcore, serving, dicom_node); about a minute without its cache."""
    result = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "Success" in result.stdout


def test_every_noqa_and_blind_except_says_why():
    missing = []
    for path in _python_files():
        for n, line in enumerate(path.read_text().splitlines(), start=1):
            where = f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
            if "# noqa" in line and not NOQA_WITH_REASON.search(line):
                missing.append(where)
            elif BLIND_EXCEPT.match(line) and "#" not in line:
                missing.append(where)
    assert not missing, "a noqa or a blind except without its reason on the line:\n" + "\n".join(missing)


def test_the_reason_checks_catch_what_they_should():
    assert NOQA_WITH_REASON.search("x = 1  # noqa: E731 - a lambda on purpose")
    assert NOQA_WITH_REASON.search("import a  # noqa: E402,F401  (re-exported)")
    assert not NOQA_WITH_REASON.search("x = 1  # noqa: E731")
    assert not NOQA_WITH_REASON.search("x = 1  # noqa")
    for line in ("    except Exception:", "  except BaseException as e:", "except (OSError, Exception) as exc:",
                 "    except:"):
        assert BLIND_EXCEPT.match(line), line
    for line in ("    except ValueError:", "    except (OSError, KeyError) as e:", "    except ExceptionGroup:"):
        assert not BLIND_EXCEPT.match(line), line
