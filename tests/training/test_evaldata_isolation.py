"""evaldata/ (real patients, evaluation only) is read by the evaluation commands and nothing else: no training
configuration, data source, family or tuning routine names it."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: A path to evaldata/ in code: a string literal that starts with it (docstrings saying it is never read don't count).
PATH_LITERAL = re.compile(r"""["'](\.\./)*(shared/eval-data|evaldata)""")
#: The only modules allowed to name evaldata/: the real-anatomy evaluations and the CLI that runs them.
READERS = {"training/recon/generalization.py", "training/synthesis/real_eval.py", "training/cli.py"}


def test_only_evaluation_modules_name_evaldata():
    offenders = []
    for folder in ("mrcore", "training", "serving", "dicom_node", "configs"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix not in (".py", ".yaml", ".yml") or not path.is_file():
                continue
            rel = path.relative_to(ROOT).as_posix()
            if PATH_LITERAL.search(path.read_text(errors="ignore")) and rel not in READERS:
                offenders.append(rel)
    assert offenders == [], f"evaldata/ is evaluation only, but these files name it: {offenders}"


def test_synthesis_training_data_never_comes_from_evaldata():
    text = (ROOT / "training/synthesis/real_eval.py").read_text()
    assert "evaluation only" in text.lower()
    assert PATH_LITERAL.search(text)  # the check above can see a reader
    for module in ("data.py", "family.py", "loop.py", "config.py", "experiments.py"):
        assert "evaldata" not in (ROOT / "training/synthesis" / module).read_text()
