"""The persistent job queue (SQLite, WAL, ``synchronous=FULL``) and the durable spool.

Job states::

    receiving --(series complete)--> complete --> processing --> delivering --> done
        ^                          ^  |            |             |
        |                          +--+ retry      |             +--> failed (a destination gave up)
    new instances of the series    (back-off)      +--> failed (inference error, or attempts exhausted)

* A series is complete when ``quiet_seconds`` have passed since ``quiet_from`` (the last instance, or the last
  start of the node if that is later: a node that was down saw nothing, so a restart never completes a series
  that was being sent when it died) AND, when the instances say how much the series holds
  (``expected_units``: ImagesInAcquisition, or the k-space block's slice total), that much has arrived
  (``received_units``); or, with less, when ``incomplete_after`` seconds have passed since ``quiet_from``: then
  the job is complete with a ``note`` saying what is missing.
* A new instance for a series whose job is ``complete`` and not yet tried reopens it (``receiving``); for a series
  already processed it opens a new job, processed after the earlier one, whose derived series is the next
  ``version`` and names the one it supersedes.
* An instance is acknowledged only after its file is written, fsynced and renamed into the spool AND its
  row is committed here; a crash at any point leaves either an unacknowledged instance (the sender
  retries) or a complete record.
* ``processing`` jobs found at start-up were interrupted: they go back to ``complete`` (their attempt
  counts, so a job that kills the node every time ends ``failed``).
* Results are written (fsync, rename) before the job enters ``delivering``; each destination has its own
  delivery row with attempts, ``next_attempt_at`` and ``last_error``. The job is ``done`` when every
  destination accepted every instance and ``failed`` when one exhausted its attempts.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from mrcore.durable import Permissions

__all__ = ["Delivery", "Job", "JobQueue", "STATES"]

STATES = ("receiving", "complete", "processing", "delivering", "done", "failed")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    route TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    study_uid TEXT,
    calling_ae TEXT,
    peer_host TEXT,
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    last_received_at REAL NOT NULL,
    num_instances INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    last_error TEXT,
    result_dir TEXT,
    result_series_uid TEXT,
    result_count INTEGER,
    model TEXT,
    completed_at REAL,
    processed_at REAL,
    finished_at REAL,
    updated_at REAL NOT NULL,
    quiet_from REAL,
    received_units INTEGER NOT NULL DEFAULT 0,
    expected_units INTEGER,
    note TEXT,
    version INTEGER,
    supersedes_series_uid TEXT
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, next_attempt_at);
CREATE INDEX IF NOT EXISTS jobs_series ON jobs(route, series_uid, state);
CREATE TABLE IF NOT EXISTS instances (
    route TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    sop_uid TEXT NOT NULL,
    job_id INTEGER NOT NULL,
    path TEXT,
    received_at REAL NOT NULL,
    units INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (route, series_uid, sop_uid)
);
CREATE TABLE IF NOT EXISTS deliveries (
    job_id INTEGER NOT NULL,
    destination TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    last_error TEXT,
    delivered_at REAL,
    PRIMARY KEY (job_id, destination)
);
"""
#: columns added after the first release: (table, column, declaration), added to an older database at open
_MIGRATIONS = (("jobs", "quiet_from", "REAL"), ("jobs", "received_units", "INTEGER NOT NULL DEFAULT 0"),
               ("jobs", "expected_units", "INTEGER"), ("jobs", "note", "TEXT"), ("jobs", "version", "INTEGER"),
               ("jobs", "supersedes_series_uid", "TEXT"), ("instances", "units", "INTEGER NOT NULL DEFAULT 1"))


@dataclass(frozen=True)
class Job:
    """One row of ``jobs`` (see the module docstring for the states)."""

    id: int
    route: str
    series_uid: str
    study_uid: str | None
    calling_ae: str | None
    peer_host: str | None
    state: str
    created_at: float
    last_received_at: float
    num_instances: int
    attempts: int
    next_attempt_at: float
    last_error: str | None
    result_dir: str | None
    result_series_uid: str | None
    result_count: int | None
    model: str | None
    completed_at: float | None
    processed_at: float | None
    finished_at: float | None
    updated_at: float
    quiet_from: float | None = None         # the series' quiet time counts from here (last instance or node start)
    received_units: int = 0                 # images (frames) or k-space slices received
    expected_units: int | None = None       # what the instances say the series holds; None: they do not say
    note: str | None = None                 # e.g. "INCOMPLETE: 13 of 32 images received"
    version: int | None = None              # version of the derived series of this source series (1, 2, ...)
    supersedes_series_uid: str | None = None  # the derived series version ``version - 1``


@dataclass(frozen=True)
class Delivery:
    job_id: int
    destination: str
    state: str  # pending | done | failed
    attempts: int
    next_attempt_at: float
    last_error: str | None
    delivered_at: float | None


class JobQueue:
    """Thread-safe access to the queue database (one connection, one lock; WAL for concurrent readers).

    Parameters
    ----------
    path : the SQLite file (created with its directory).
    clock : time source (``time.time``); tests may pass another.
    permissions : modes of the database file and its directory (default owner only, 0600 / 0700); SQLite gives
        its ``-wal`` and ``-shm`` files the database file's mode.
    """

    def __init__(self, path: str | Path, clock=time.time, permissions: Permissions | None = None) -> None:
        self.path = Path(path)
        (permissions or Permissions()).create_file(self.path)
        self._clock = clock
        self._lock = threading.RLock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=30000")
        self._db.executescript(_SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        """Add the columns of :data:`_MIGRATIONS` that an older database lacks."""
        for table, column, decl in _MIGRATIONS:
            have = {r[1] for r in self._db.execute(f"PRAGMA table_info({table})")}
            if column not in have:
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- transactions ------------------------------------------------------------------------------
    def _tx(self):
        queue = self

        class _Tx:
            def __enter__(self):
                queue._lock.acquire()
                queue._db.execute("BEGIN IMMEDIATE")
                return queue._db

            def __exit__(self, exc_type, exc, tb):
                try:
                    queue._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
                finally:
                    queue._lock.release()
                return False

        return _Tx()

    # --- receiving ---------------------------------------------------------------------------------
    def add_instance(self, *, route: str, series_uid: str, study_uid: str, sop_uid: str, path: str,
                     calling_ae: str, peer_host: str, units: int = 1,
                     expected_units: int | None = None) -> tuple[int | None, bool]:
        """Record a spooled instance. Returns ``(job_id, is_new)``; duplicates (same route, series and
        SOP Instance UID) are not recorded again (``is_new`` False, ``job_id`` the job that holds it) but restart
        the quiet time of a series still being received.

        units, expected_units : what the instance adds to its series and what the series holds, in images or
            k-space slices (:func:`serving.dicom.series_extent`); ``expected_units`` None: not said.
        """
        now = self._clock()
        with self._tx() as db:
            row = db.execute("SELECT job_id FROM instances WHERE route=? AND series_uid=? AND sop_uid=?",
                             (route, series_uid, sop_uid)).fetchone()
            if row is not None:
                db.execute("UPDATE jobs SET quiet_from=?, updated_at=? WHERE route=? AND series_uid=? AND "
                           "state='receiving'", (now, now, route, series_uid))
                return int(row[0]), False
            job = db.execute("SELECT id FROM jobs WHERE route=? AND series_uid=? AND (state='receiving' OR "
                             "(state='complete' AND attempts=0)) ORDER BY id DESC LIMIT 1",
                             (route, series_uid)).fetchone()
            if job is None:
                cur = db.execute(
                    "INSERT INTO jobs (route, series_uid, study_uid, calling_ae, peer_host, state, created_at, "
                    "last_received_at, updated_at, quiet_from) VALUES (?,?,?,?,?,'receiving',?,?,?,?)",
                    (route, series_uid, study_uid, calling_ae, peer_host, now, now, now, now))
                job_id = int(cur.lastrowid)
            else:
                job_id = int(job[0])
            db.execute("INSERT INTO instances (route, series_uid, sop_uid, job_id, path, received_at, units) "
                       "VALUES (?,?,?,?,?,?,?)", (route, series_uid, sop_uid, job_id, path, now, int(units)))
            db.execute("UPDATE jobs SET state='receiving', completed_at=NULL, note=NULL, last_received_at=?, "
                       "quiet_from=?, updated_at=?, num_instances=num_instances+1, "
                       "expected_units=CASE WHEN ? IS NULL THEN expected_units ELSE MAX(COALESCE(expected_units, 0), ?) "
                       "END WHERE id=?", (now, now, now, expected_units, expected_units, job_id))
            return job_id, True

    def has_instance(self, route: str, series_uid: str, sop_uid: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM instances WHERE route=? AND series_uid=? AND sop_uid=?",
                                    (route, series_uid, sop_uid)).fetchone() is not None

    def complete_quiet(self, quiet_seconds: float, incomplete_after: float | None = None) -> list[Job]:
        """Move ``receiving`` jobs whose series is complete to ``complete``; returns them.

        Complete: quiet for ``quiet_seconds`` since ``quiet_from`` and, when the series says how much it holds,
        all of it received; or quiet for ``incomplete_after`` seconds (None: never) with less, then with a
        ``note`` naming what arrived.
        """
        now = self._clock()
        done = []
        with self._tx() as db:
            rows = db.execute("SELECT * FROM jobs WHERE state='receiving' AND COALESCE(quiet_from, last_received_at)"
                              "<=?", (now - quiet_seconds,)).fetchall()
            for r in rows:
                n, units = db.execute("SELECT COUNT(*), COALESCE(SUM(units), 0) FROM instances WHERE route=? AND "
                                      "series_uid=? AND path IS NOT NULL", (r["route"], r["series_uid"])).fetchone()
                expected, quiet = r["expected_units"], now - (r["quiet_from"] or r["last_received_at"])
                note = None
                if expected is not None and units < expected:
                    if incomplete_after is None or quiet < incomplete_after:
                        continue  # the rest of the series is still to come
                    note = f"{units} of {expected} images/slices received"
                db.execute("UPDATE jobs SET state='complete', num_instances=?, received_units=?, note=?, "
                           "completed_at=?, next_attempt_at=?, updated_at=? WHERE id=?",
                           (n, units, note, now, now, now, r["id"]))
                done.append(int(r["id"]))
        return [self.job(i) for i in done]

    def instance_paths(self, job: Job) -> list[str]:
        """Spool files of every instance of the job's series (late arrivals of earlier jobs included)."""
        with self._lock:
            rows = self._db.execute("SELECT path FROM instances WHERE route=? AND series_uid=? AND path IS NOT NULL "
                                    "ORDER BY received_at", (job.route, job.series_uid)).fetchall()
        return [r[0] for r in rows]

    # --- processing ----------------------------------------------------------------------------------
    def recover(self) -> int:
        """At start-up: interrupted ``processing`` jobs go back to ``complete`` and the quiet time of series being
        received starts again (the node saw nothing while it was down). Returns how many jobs were interrupted."""
        now = self._clock()
        with self._tx() as db:
            db.execute("UPDATE jobs SET quiet_from=MAX(COALESCE(quiet_from, last_received_at), ?) "
                       "WHERE state='receiving'", (now,))
            cur = db.execute("UPDATE jobs SET state='complete', next_attempt_at=?, updated_at=?, "
                             "last_error=COALESCE(last_error, 'interrupted (node restarted)') "
                             "WHERE state='processing'", (now, now))
            return cur.rowcount

    def claim_for_processing(self) -> Job | None:
        """Atomically take the oldest due ``complete`` job: state ``processing``, attempts + 1."""
        now = self._clock()
        with self._tx() as db:
            row = db.execute("SELECT id FROM jobs WHERE state='complete' AND next_attempt_at<=? AND NOT EXISTS "
                             "(SELECT 1 FROM jobs j2 WHERE j2.route=jobs.route AND j2.series_uid=jobs.series_uid "
                             "AND j2.id<jobs.id AND j2.state IN ('complete', 'processing')) "
                             "ORDER BY next_attempt_at, id LIMIT 1", (now,)).fetchone()
            if row is None:
                return None
            db.execute("UPDATE jobs SET state='processing', attempts=attempts+1, updated_at=? WHERE id=?",
                       (now, row[0]))
        return self.job(int(row[0]))

    def superseded(self, job: Job) -> Job | None:
        """The latest earlier job of the same route and series that made a derived series (which ``job``'s
        derived series supersedes), or None."""
        with self._lock:
            row = self._db.execute("SELECT id FROM jobs WHERE route=? AND series_uid=? AND id<? AND "
                                   "result_series_uid IS NOT NULL ORDER BY id DESC LIMIT 1",
                                   (job.route, job.series_uid, job.id)).fetchone()
        return None if row is None else self.job(int(row[0]))

    def processed(self, job_id: int, *, result_dir: str, result_series_uid: str, result_count: int, model: str,
                  destinations: Iterable[str], version: int = 1, supersedes_series_uid: str | None = None) -> None:
        """Results are on disk: ``delivering`` with one pending delivery per destination."""
        now = self._clock()
        with self._tx() as db:
            db.execute("UPDATE jobs SET state='delivering', result_dir=?, result_series_uid=?, result_count=?, "
                       "model=?, last_error=NULL, processed_at=?, updated_at=?, version=?, supersedes_series_uid=? "
                       "WHERE id=?", (result_dir, result_series_uid, result_count, model, now, now, version,
                                      supersedes_series_uid, job_id))
            for d in destinations:
                db.execute("INSERT OR REPLACE INTO deliveries (job_id, destination, state, attempts, next_attempt_at)"
                           " VALUES (?,?,'pending',0,?)", (job_id, d, now))

    def processing_failed(self, job_id: int, error: str, *, retry_in: float | None) -> str:
        """Record a failed attempt: back to ``complete`` after ``retry_in`` seconds, or ``failed`` (None)."""
        now = self._clock()
        state = "failed" if retry_in is None else "complete"
        with self._tx() as db:
            db.execute("UPDATE jobs SET state=?, last_error=?, next_attempt_at=?, updated_at=?, "
                       "finished_at=CASE WHEN ?='failed' THEN ? ELSE finished_at END WHERE id=?",
                       (state, error[:2000], now + (retry_in or 0), now, state, now, job_id))
        return state

    # --- delivery ------------------------------------------------------------------------------------
    def claim_delivery(self, busy: set[tuple[int, str]]) -> Delivery | None:
        """The oldest due pending delivery not in ``busy`` (the caller marks it busy while sending)."""
        now = self._clock()
        with self._lock:
            rows = self._db.execute(
                "SELECT d.* FROM deliveries d JOIN jobs j ON j.id=d.job_id WHERE d.state='pending' AND "
                "j.state='delivering' AND d.next_attempt_at<=? ORDER BY d.next_attempt_at, d.job_id",
                (now,)).fetchall()
        for r in rows:
            if (r["job_id"], r["destination"]) not in busy:
                return Delivery(**dict(r))
        return None

    def delivery_result(self, job_id: int, destination: str, *, ok: bool, error: str | None = None,
                        retry_in: float | None = None) -> str:
        """Record a delivery attempt; returns the job's new state."""
        now = self._clock()
        with self._tx() as db:
            if ok:
                db.execute("UPDATE deliveries SET state='done', attempts=attempts+1, delivered_at=?, last_error=NULL "
                           "WHERE job_id=? AND destination=?", (now, job_id, destination))
            else:
                state = "failed" if retry_in is None else "pending"
                db.execute("UPDATE deliveries SET state=?, attempts=attempts+1, next_attempt_at=?, last_error=? "
                           "WHERE job_id=? AND destination=?",
                           (state, now + (retry_in or 0), (error or "")[:2000], job_id, destination))
            states = [r[0] for r in db.execute("SELECT state FROM deliveries WHERE job_id=?", (job_id,))]
            if states and all(s == "done" for s in states):
                job_state = "done"
            elif "failed" in states and "pending" not in states:
                job_state = "failed"
            else:
                job_state = "delivering"
            err = None if job_state == "done" else (f"delivery to {destination}: {error}" if not ok else None)
            db.execute("UPDATE jobs SET state=?, last_error=COALESCE(?, CASE WHEN ?='done' THEN NULL ELSE last_error "
                       "END), updated_at=?, finished_at=CASE WHEN ? IN ('done','failed') THEN ? ELSE finished_at END "
                       "WHERE id=?", (job_state, err, job_state, now, job_state, now, job_id))
            return job_state

    # --- operator actions ----------------------------------------------------------------------------
    def retry(self, job_id: int) -> str:
        """Re-queue a ``failed`` job: failed deliveries again (results kept), else processing again."""
        now = self._clock()
        with self._tx() as db:
            row = db.execute("SELECT state, result_dir FROM jobs WHERE id=?", (job_id,)).fetchone()
            if row is None:
                raise KeyError(f"no job {job_id}")
            if row["state"] != "failed":
                raise ValueError(f"job {job_id} is {row['state']!r}; only failed jobs can be retried")
            if row["result_dir"] and Path(row["result_dir"]).is_dir():
                db.execute("UPDATE deliveries SET state='pending', attempts=0, next_attempt_at=? "
                           "WHERE job_id=? AND state='failed'", (now, job_id))
                new = "delivering"
            else:
                new = "complete"
            db.execute("UPDATE jobs SET state=?, attempts=0, next_attempt_at=?, finished_at=NULL, updated_at=? "
                       "WHERE id=?", (new, now, now, job_id))
            return new

    def purgeable(self, older_than: float) -> list[tuple[Job, list[str]]]:
        """``done`` jobs finished before ``older_than`` that still have files: (job, spool paths of its series)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id FROM jobs WHERE state='done' AND finished_at<? AND result_dir IS NOT NULL AND NOT EXISTS "
                "(SELECT 1 FROM jobs j2 WHERE j2.route=jobs.route AND j2.series_uid=jobs.series_uid AND "
                "j2.state NOT IN ('done', 'failed'))", (older_than,)).fetchall()
        out = []
        for r in rows:
            job = self.job(int(r[0]))
            out.append((job, self.instance_paths(job)))
        return out

    def forget_files(self, job: Job) -> None:
        """After the files of ``job`` were removed: clear its result dir and its series' instance paths
        (the instance rows stay, so a retransmitted instance is still recognised as a duplicate)."""
        with self._tx() as db:
            db.execute("UPDATE jobs SET result_dir=NULL, updated_at=? WHERE id=?", (self._clock(), job.id))
            db.execute("UPDATE instances SET path=NULL WHERE route=? AND series_uid=?", (job.route, job.series_uid))

    # --- queries -------------------------------------------------------------------------------------
    def job(self, job_id: int) -> Job:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        if row is None:
            raise KeyError(f"no job {job_id}")
        return Job(**dict(row))

    def jobs(self, state: str | None = None, limit: int = 1000) -> list[Job]:
        with self._lock:
            if state:
                rows = self._db.execute("SELECT * FROM jobs WHERE state=? ORDER BY id DESC LIMIT ?", (state, limit))
            else:
                rows = self._db.execute("SELECT * FROM jobs ORDER BY id DESC LIMIT ?", (limit,))
            return [Job(**dict(r)) for r in rows.fetchall()]

    def deliveries(self, job_id: int) -> list[Delivery]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM deliveries WHERE job_id=? ORDER BY destination", (job_id,))
            return [Delivery(**dict(r)) for r in rows.fetchall()]

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        return {r[0]: int(r[1]) for r in rows}
