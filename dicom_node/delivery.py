"""Sending a derived series to one destination: C-STORE SCU (optional TLS) or STOW-RS (DICOMweb).

C-STORE: one association per attempt; every instance must be answered with a success or warning status
(``0x0000``, ``0xB000``, ``0xB006``, ``0xB007``), otherwise the attempt fails as a whole and the worker
retries it later (a PACS keeps one copy per SOP Instance UID, so resending is harmless).

STOW-RS (``kind: dicomweb``): one ``POST <url>/studies`` per attempt with every instance
(``dicomweb-client``, its own retries off: the queue's back-off is the one retry policy); the attempt
succeeds only on 200 with no ``FailedSOPSequence``. 202 (some failed), 4xx/5xx, a refused connection or a
timeout fail the attempt, with the reason in ``last_error``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pydicom
import requests
from dicomweb_client import DICOMwebClient
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE

from dicom_node.config import WebDestination

if TYPE_CHECKING:
    from dicom_node.config import Destination

__all__ = ["DeliveryError", "deliver", "send_files", "send_stow"]

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


def _session(dest: WebDestination) -> requests.Session:
    """A requests session with the destination's credentials (read now) and TLS settings."""
    session = requests.Session()
    if dest.auth is not None:
        secret = dest.auth.secret()
        if dest.auth.kind == "bearer":
            session.headers["Authorization"] = f"Bearer {secret}"
        else:
            session.auth = (str(dest.auth.username), secret)
    if dest.tls is not None:
        session.verify = (str(dest.tls.ca_certificates) if dest.tls.ca_certificates else True) \
            if dest.tls.verify_server else False
        if dest.tls.certificate:
            session.cert = (str(dest.tls.certificate), str(dest.tls.private_key))
    return session


def _reasons(failed) -> str:
    codes = sorted({f"0x{int(i.FailureReason):04X}" for i in failed if "FailureReason" in i})
    return ", ".join(codes) or "no reason given"


def send_stow(dest: WebDestination, files: Sequence[Path], *, timeout: float = 30.0) -> int:
    """STOW-RS ``files`` to ``dest`` in one request; returns how many were stored.

    Raises
    ------
    DeliveryError
        Connection refused / timeout, an HTTP error status, or instances in the answer's FailedSOPSequence.
    """
    datasets = [pydicom.dcmread(f) for f in files]
    try:
        session = _session(dest)
    except (ValueError, OSError) as e:
        raise DeliveryError(f"{dest.describe()}: credentials: {e}") from None
    client = DICOMwebClient(dest.url, session=session, timeout=timeout)
    client.set_http_retry_params(retry=False)
    try:
        answer = client.store_instances(datasets)
    except requests.HTTPError as e:
        response = e.response  # (a Response is falsy for 4xx/5xx: compare with None)
        code = response.status_code if response is not None else "?"
        detail = ""
        try:
            failed = pydicom.Dataset.from_json(response.json()).get("FailedSOPSequence", []) \
                if response is not None else []
            detail = f" ({len(failed)} instance(s) failed: {_reasons(failed)})" if failed else ""
        except ValueError:  # not (DICOM) JSON
            pass
        raise DeliveryError(f"{dest.describe()} answered HTTP {code}{detail}") from None
    except requests.Timeout:
        raise DeliveryError(f"{dest.describe()}: timeout after {timeout:.0f} s") from None
    except requests.ConnectionError as e:
        why = "connection refused" if "refused" in str(e).lower() else f"connection failed ({e.__class__.__name__})"
        raise DeliveryError(f"{dest.describe()}: {why}") from None
    finally:
        session.close()
    failed = answer.get("FailedSOPSequence", [])
    if failed:
        raise DeliveryError(f"{dest.describe()} refused {len(failed)}/{len(datasets)} instance(s): {_reasons(failed)}")
    return len(datasets)


def deliver(dest: Destination | WebDestination, files: Sequence[Path], *, calling_ae_title: str,
            timeout: float = 30.0) -> int:
    """Send ``files`` to ``dest`` by its kind: STOW-RS for a DICOMweb server, else C-STORE."""
    if isinstance(dest, WebDestination):
        return send_stow(dest, files, timeout=timeout)
    return send_files(dest, files, calling_ae_title=calling_ae_title, timeout=timeout)
