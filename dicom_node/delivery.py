"""Sending a derived series to one destination (C-STORE SCU, optional TLS).

One association per attempt; every instance must be answered with a success or warning status
(``0x0000``, ``0xB000``, ``0xB006``, ``0xB007``), otherwise the attempt fails as a whole and the worker
retries it later (a PACS keeps one copy per SOP Instance UID, so resending is harmless).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pydicom
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE

if TYPE_CHECKING:
    from dicom_node.config import Destination

__all__ = ["DeliveryError", "send_files"]

_OK = {0x0000, 0xB000, 0xB006, 0xB007}


class DeliveryError(RuntimeError):
    """The destination could not be reached or refused an instance."""


def send_files(dest: Destination, files: Sequence[Path], *, calling_ae_title: str, timeout: float = 30.0) -> int:
    """C-STORE ``files`` to ``dest`` in one association; returns how many were stored.

    Raises
    ------
    DeliveryError
        Association refused / failed, or an instance answered with a failure status.
    """
    datasets = [pydicom.dcmread(f) for f in files]
    ae = AE(ae_title=dest.calling_ae_title or calling_ae_title)
    ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = timeout
    for sop_class in sorted({str(ds.SOPClassUID) for ds in datasets}):
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    tls_args = (dest.tls.client_context(), dest.host) if dest.tls else None
    assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title, tls_args=tls_args)
    if not assoc.is_established:
        why = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "no connection"
        raise DeliveryError(f"association with {dest.describe()} failed ({why})")
    try:
        for i, ds in enumerate(datasets, start=1):
            status = assoc.send_c_store(ds)
            code = int(status.Status) if status is not None and "Status" in status else None
            if code not in _OK:
                raise DeliveryError(f"{dest.describe()} answered instance {i}/{len(datasets)} with "
                                    + ("no response (timeout or abort)" if code is None else f"status 0x{code:04X}"))
    finally:
        if assoc.is_established:
            assoc.release()
        else:
            assoc.abort()
    return len(datasets)
