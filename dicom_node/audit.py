"""Privacy-safe logging: hashed UIDs, one audit line per received and per sent series, no patient data.

Nothing here ever formats a dataset: log lines carry only hashed UIDs, AE titles, hosts, counts, route
and job ids. ``PatientName``, ``PatientID`` and ``PatientBirthDate`` never reach a log (tested).
pydicom's own value warnings (which quote element values) are silenced in the node process.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pydicom.config

from mrcore.durable import Permissions
from serving.logs import configure_logging as configure_service_logging
from serving.logs import uid_hash

__all__ = ["audit", "configure_logging", "uid_hash"]

AUDIT = logging.getLogger("dicom_node.audit")


def audit(event: str, **fields) -> None:
    """One audit line: ``AUDIT <event> key=value ...`` (values must already be privacy-safe)."""
    AUDIT.info("AUDIT %s %s", event, " ".join(f"{k}={v}" for k, v in fields.items()))


def configure_logging(level: str = "INFO", audit_file: Path | None = None, fmt: str = "text",
                      permissions: Permissions | None = None) -> None:
    """The services' logging (:func:`serving.logs.configure_logging`, ``fmt`` ``text`` or ``json``) to stderr,
    the audit lines also to ``audit_file`` (created with ``permissions``' file mode, default 0600); third-party
    loggers that could quote datasets are quieted (pynetdicom at WARNING)."""
    configure_service_logging(level, fmt)
    if audit_file is not None:
        (permissions or Permissions()).create_file(audit_file)
        fh = logging.FileHandler(audit_file)
        fh.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        AUDIT.addHandler(fh)
    # pynetdicom at INFO/DEBUG dumps DIMSE messages and can dump datasets; pydicom warnings quote values
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    logging.getLogger("dicomweb_client").setLevel(logging.CRITICAL)  # its INFO/ERROR lines quote Study/SOP UIDs
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    warnings.filterwarnings("ignore", module=r"pydicom\..*")
