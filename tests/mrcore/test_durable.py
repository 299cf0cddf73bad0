"""mrcore.durable: a file is the old one or the new one, never torn, also when the writer is killed."""

import grp
import json
import os
import signal
import stat
import subprocess
import sys
import time

import numpy as np
import pytest

from mrcore.durable import Permissions, append_durable, durable_path, write_durable, write_json_durable
from tests.conftest import ROOT


def test_write_replace_and_no_temporary_left(tmp_path):
    target = tmp_path / "sub" / "state.json"
    write_json_durable(target, {"round": 1})
    write_json_durable(target, {"round": 2}, indent=1)
    assert json.loads(target.read_text()) == {"round": 2}
    write_durable(target, [b"a", b"b"])
    assert target.read_bytes() == b"ab"
    write_durable(target, "text é")
    assert target.read_text(encoding="utf-8") == "text é"
    assert sorted(p.name for p in target.parent.iterdir()) == ["state.json"]


def test_a_failing_writer_leaves_the_old_file(tmp_path):
    target = tmp_path / "weights.npy"
    np.save(target, np.arange(3))
    with pytest.raises(RuntimeError, match="disk full"):
        with durable_path(target) as tmp:
            np.save(tmp, np.zeros(10))
            raise RuntimeError("disk full")
    np.testing.assert_array_equal(np.load(target), np.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights.npy"]


def test_durable_path_for_writers_that_want_a_name(tmp_path):
    target = tmp_path / "w.npz"
    with durable_path(target) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, x=np.ones(2))
    assert np.load(target)["x"].tolist() == [1.0, 1.0]


def test_modes_of_patient_data_whatever_the_umask(tmp_path):
    old = os.umask(0o022)  # a permissive umask: the modes must not depend on it
    try:
        p = Permissions()
        write_durable(tmp_path / "store" / "a" / "x.dcm", b"1", mode=p.file_mode, dir_mode=p.dir_mode)
        assert stat.S_IMODE((tmp_path / "store" / "a" / "x.dcm").stat().st_mode) == 0o600
        assert stat.S_IMODE((tmp_path / "store" / "a").stat().st_mode) == 0o700
        legacy = tmp_path / "store" / "legacy.txt"
        legacy.write_text("x")  # 0644, as an older version left it
        p.create_file(tmp_path / "store" / "db.sqlite")
        p.prepare(tmp_path / "store")
        modes = {stat.S_IMODE(q.stat().st_mode) for q in (tmp_path / "store").rglob("*")}
        assert modes == {0o600, 0o700}
        group = grp.getgrgid(os.getgid()).gr_name
        g = Permissions(group)
        g.prepare(tmp_path / "store")
        assert stat.S_IMODE((tmp_path / "store").stat().st_mode) == 0o2750
        assert stat.S_IMODE(legacy.stat().st_mode) == 0o640
        with pytest.raises(ValueError, match="does not exist"):
            Permissions("no-such-group-mri")
    finally:
        os.umask(old)


def test_append_is_one_record_per_call(tmp_path):
    log = tmp_path / "metrics.jsonl"
    for i in range(3):
        append_durable(log, json.dumps({"round": i}) + "\n")
    assert [json.loads(line)["round"] for line in log.read_text().splitlines()] == [0, 1, 2]


@pytest.mark.slow
def test_killed_writer_never_leaves_a_torn_file(tmp_path):
    """A real writer process rewrites an 8 MB file in a loop and is killed with SIGKILL at a random moment,
    five times: the target always holds one complete version (all bytes equal to its first byte)."""
    target = tmp_path / "big.bin"
    write_durable(target, bytes([0]) * (8 << 20))
    script = ("import sys\nfrom mrcore.durable import write_durable\ni = 1\n"
              "while True:\n    write_durable(sys.argv[1], bytes([i % 256]) * (8 << 20))\n    i += 1\n")
    rng = np.random.default_rng(0)
    for _ in range(5):
        proc = subprocess.Popen([sys.executable, "-c", script, str(target)], cwd=ROOT)
        time.sleep(0.3 + float(rng.random()))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        data = target.read_bytes()
        assert len(data) == 8 << 20 and data.count(data[:1]) == len(data)
