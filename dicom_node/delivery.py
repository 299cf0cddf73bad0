"""Sending a derived series to one destination: C-STORE SCU (optional TLS) or STOW-RS (DICOMweb).

C-STORE: one association per attempt; every instance must be answered with a success or warning status
(``0x0000``, ``0xB000``, ``0xB006``, ``0xB007``), otherwise the attempt fails as a whole and the worker
retries it later (a PACS keeps one copy per SOP Instance UID, so resending is harmless).

A failed attempt raises one :class:`DeliveryError` whose ``cause`` is one of :data:`CAUSES` (``connection
refused``, ``timeout``, ``rejected``, ``aborted``, ``cannot connect``, ``failure status``); the worker logs it as
one line. pynetdicom's own warnings and errors about the attempt (two ERROR lines for a refused connection,
four for a rejection) are collected into the exception instead of logged, and the socket of a connection that
failed is closed (pynetdicom leaves it open, which Python reports as an unclosed-socket ResourceWarning).

STOW-RS (``kind: dicomweb``): one ``POST <url>/studies`` per attempt with every instance
(``dicomweb-client``, its own retries off: the queue's back-off is the one retry policy); the attempt
succeeds only on 200 with no ``FailedSOPSequence``. 202 (some failed), 4xx/5xx, a refused connection or a
timeout fail the attempt, with the reason in ``last_error`` (the same :class:`DeliveryError` causes).
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pydicom
import requests
from dicomweb_client import DICOMwebClient
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.transport import AssociationSocket

from dicom_node.config import WebDestination

if TYPE_CHECKING:
    from dicom_node.config import Destination

__all__ = ["CAUSES", "DeliveryError", "deliver", "send_files", "send_stow"]

_OK = {0x0000, 0xB000, 0xB006, 0xB007}
CAUSES = ("connection refused", "timeout", "rejected", "aborted", "cannot connect", "failure status", "credentials")
#: pynetdicom's loggers that report on an association a delivery makes
_PYNETDICOM_LOGGERS = ("pynetdicom.transport", "pynetdicom.association", "pynetdicom.acse", "pynetdicom.dul",
                       "pynetdicom.fsm", "pynetdicom.dimse", "pynetdicom.ae", "pynetdicom.events")


class DeliveryError(RuntimeError):
    """The destination could not be reached or refused an instance; ``cause`` is one of :data:`CAUSES`."""

    def __init__(self, cause: str, detail: str) -> None:
        super().__init__(f"{cause}: {detail}")
        self.cause = cause


class _ClosingSocket(AssociationSocket):
    """pynetdicom's socket, closed even when the connection never opened (``shutdown`` then raises ENOTCONN and
    pynetdicom skips ``close``)."""

    def _shutdown_socket(self) -> None:
        sock = self.socket
        if sock is None:
            return
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()


class _DeliveryAE(AE):
    """An AE whose associations use :class:`_ClosingSocket` and whose pynetdicom log records are collected."""

    def __init__(self, ae_title: str) -> None:
        super().__init__(ae_title=ae_title)
        self.records: list[str] = []

    def _create_socket(self, assoc, address, tls_args):
        sock = _ClosingSocket(assoc, address=address)
        sock.tls_args = tls_args
        return sock


class _Collect(logging.Filter):
    """Keeps pynetdicom's records about a delivery's association out of the log and on the delivery's AE."""

    def __init__(self) -> None:
        super().__init__()
        self.callers: dict[int, _DeliveryAE] = {}  # thread id of a sender -> its AE
        self.lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        thread = threading.current_thread()
        # an association thread (pynetdicom's Association) or its DUL thread (DULServiceProvider.assoc)
        ae = getattr(thread, "ae", None) or getattr(getattr(thread, "assoc", None), "ae", None)
        if not isinstance(ae, _DeliveryAE):
            with self.lock:
                ae = self.callers.get(threading.get_ident())
        if ae is None:
            return True
        ae.records.append(record.getMessage())
        return False


_COLLECT = _Collect()
for _name in _PYNETDICOM_LOGGERS:
    logging.getLogger(_name).addFilter(_COLLECT)


def _cause(ae: _DeliveryAE, assoc) -> str:
    """The cause of a failed association (one of :data:`CAUSES`) from its state and pynetdicom's records."""
    text = " ".join(ae.records).lower()
    if assoc.is_rejected:
        return "rejected"
    if "connection refused" in text or "errno 111" in text:
        return "connection refused"
    if "timed out" in text or "timeout" in text:
        return "timeout"
    if "tcp initialisation error" in text:
        return "cannot connect"
    return "aborted"


def _detail(ae: _DeliveryAE) -> str:
    """The most telling pynetdicom record (the TCP error, the rejection reason), or ''."""
    for r in ae.records:
        if r.startswith("TCP Initialisation Error: "):
            return r[len("TCP Initialisation Error: "):]
    reasons = [r.strip() for r in ae.records if r.strip().startswith(("Reason:", "Result:"))]
    return ", ".join(reasons)


def send_files(dest: Destination, files: Sequence[Path], *, calling_ae_title: str, timeout: float = 30.0) -> int:
    """C-STORE ``files`` to ``dest`` in one association; returns how many were stored.

    Raises
    ------
    DeliveryError
        Connection refused / timed out, association rejected or aborted, or an instance answered with a
        failure status (``cause`` says which).
    """
    datasets = [pydicom.dcmread(f) for f in files]
    ae = _DeliveryAE(ae_title=dest.calling_ae_title or calling_ae_title)
    ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = ae.connection_timeout = timeout
    for sop_class in sorted({str(ds.SOPClassUID) for ds in datasets}):
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    tls_args = (dest.tls.client_context(), dest.host) if dest.tls else None
    with _COLLECT.lock:
        _COLLECT.callers[threading.get_ident()] = ae
    try:
        assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title, tls_args=tls_args)
        if not assoc.is_established:
            cause, detail = _cause(ae, assoc), _detail(ae)
            raise DeliveryError(cause, f"association with {dest.describe()} failed"
                                + (f" ({detail})" if detail else ""))
        try:
            for i, ds in enumerate(datasets, start=1):
                status = assoc.send_c_store(ds)
                code = int(status.Status) if status is not None and "Status" in status else None
                if code is None:
                    raise DeliveryError("timeout" if "timeout" in " ".join(ae.records).lower() else "aborted",
                                        f"{dest.describe()} gave no response to instance {i}/{len(datasets)}")
                if code not in _OK:
                    raise DeliveryError("failure status", f"{dest.describe()} answered instance {i}/{len(datasets)} "
                                        f"with status 0x{code:04X}")
        finally:
            if assoc.is_established:
                assoc.release()
            else:
                assoc.abort()
    finally:
        with _COLLECT.lock:
            _COLLECT.callers.pop(threading.get_ident(), None)
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
        raise DeliveryError("credentials", f"{dest.describe()}: {e}") from None
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
        raise DeliveryError("failure status", f"{dest.describe()} answered HTTP {code}{detail}") from None
    except requests.Timeout:
        raise DeliveryError("timeout", f"{dest.describe()}: no answer after {timeout:.0f} s") from None
    except requests.ConnectionError as e:
        refused = "refused" in str(e).lower()
        raise DeliveryError("connection refused" if refused else "cannot connect",
                            f"{dest.describe()}" + ("" if refused else f" ({e.__class__.__name__})")) from None
    finally:
        session.close()
    failed = answer.get("FailedSOPSequence", [])
    if failed:
        raise DeliveryError("failure status",
                            f"{dest.describe()} refused {len(failed)}/{len(datasets)} instance(s): {_reasons(failed)}")
    return len(datasets)


def deliver(dest: Destination | WebDestination, files: Sequence[Path], *, calling_ae_title: str,
            timeout: float = 30.0) -> int:
    """Send ``files`` to ``dest`` by its kind: STOW-RS for a DICOMweb server, else C-STORE."""
    if isinstance(dest, WebDestination):
        return send_stow(dest, files, timeout=timeout)
    return send_files(dest, files, calling_ae_title=calling_ae_title, timeout=timeout)
