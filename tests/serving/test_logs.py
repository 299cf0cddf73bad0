"""serving.logs: the services' one logging set-up, JSON or text, in a process of its own (logging is global)."""

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

SCRIPT = """
import logging, sys, warnings
from serving.logs import configure_logging, request_id_var
configure_logging("INFO", sys.argv[1])
configure_logging("INFO", sys.argv[1])  # again: still one handler, one line per record
log = logging.getLogger("dicom_node")
log.debug("not shown")
log.info("stored %d instances", 3, extra={"job_id": 7})
request_id_var.set("req-1")
log.warning("late")
warnings.warn("a library warning")
"""


def _run(fmt: str) -> list[str]:
    r = subprocess.run([sys.executable, "-c", SCRIPT, fmt], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stderr.splitlines()


def test_json_lines_carry_level_logger_extras_and_request_id():
    lines = [json.loads(x) for x in _run("json")]
    assert [x["msg"] for x in lines[:2]] == ["stored 3 instances", "late"] and len(lines) == 3
    assert lines[0]["level"] == "INFO" and lines[0]["logger"] == "dicom_node" and lines[0]["job_id"] == 7
    assert "request_id" not in lines[0] and lines[1]["request_id"] == "req-1"
    assert lines[2]["logger"] == "py.warnings" and "a library warning" in lines[2]["msg"]


def test_text_lines_name_logger_then_extras():
    lines = _run("text")
    assert len(lines) == 3 and " INFO dicom_node: stored 3 instances job_id=7" in lines[0]
    assert lines[1].endswith("WARNING dicom_node: late request_id=req-1")


def test_unknown_format_is_refused():
    from serving.logs import configure_logging

    with pytest.raises(ValueError, match="json, text"):
        configure_logging("INFO", "yaml")
