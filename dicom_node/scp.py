"""The storage SCP: association policy per called AE title, C-ECHO, durable C-STORE.

Association (``EVT_REQUESTED``, before any negotiation):

* called AE title without a route -> A-ASSOCIATE-RJ, permanent, "called AE title not recognised" (0x07);
* calling AE title / host not allowed by any route of that called AE -> A-ASSOCIATE-RJ, permanent,
  "calling AE title not recognised" (0x03);
* otherwise the presentation contexts offered are only those of that AE's routes (Verification plus
  Raw Data Storage for reconstruction, MR and Enhanced MR Image Storage for synthesis), so an SOP class
  no route accepts is refused in negotiation.

C-STORE: decode, validate (:func:`serving.dicom.check_image` / :func:`serving.dicom.check_kspace_instance`),
pick the first route whose rules match, then write the instance to the spool (``.part``, fsync, rename,
fsync directory) and commit it to the queue; only then answer ``0x0000``. Failure statuses:

====== =====================================================================================
0xA700 out of resources: the spool or the queue could not be written
0xA900 data set does not match SOP class: missing attribute, wrong pixel data / k-space size,
       or no route's rules accept the instance
0xC000 cannot understand: the data set cannot be parsed, pixel data cannot be decoded
0x0122 SOP class not supported (an SOP class with no route; normally refused in negotiation)
0xC122 transfer syntax not supported (only reachable by STOW-RS; C-STORE negotiates the syntaxes)
====== =====================================================================================

STOW-RS (:mod:`dicom_node.dicomweb`) stores through the same :meth:`StorageSCP.store`, with these codes as
the PS3.18 FailureReason of each instance.

Every failure is logged with the route, the hashed SOP Instance UID and the reason; the association and
the node go on serving.
"""

from __future__ import annotations

import copy
import hashlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset
from pydicom.pixels import get_decoder
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, build_context, evt
from pynetdicom.transport import ThreadedAssociationServer

from dicom_node.audit import uid_hash
from mrcore.durable import write_durable
from serving.dicom import (
    ENHANCED_MR_IMAGE_STORAGE,
    MR_IMAGE_STORAGE,
    RAW_DATA_STORAGE,
    DicomInputError,
    check_image,
    check_kspace_instance,
)
from serving.dicom.series import guess_contrast, series_extent

if TYPE_CHECKING:
    from dicom_node.config import NodeConfig, Route
    from dicom_node.queue import JobQueue

__all__ = ["SOP_CLASSES", "StorageSCP", "image_transfer_syntaxes"]

log = logging.getLogger("dicom_node.scp")

#: SOP classes per route task.
SOP_CLASSES = {
    "reconstruction": (RAW_DATA_STORAGE,),
    "synthesis": (MR_IMAGE_STORAGE, ENHANCED_MR_IMAGE_STORAGE),
}
#: Verification SOP Class (pynetdicom builds its sop_class names at run time, out of a type checker's sight)
VERIFICATION = UID("1.2.840.10008.1.1")
_UNCOMPRESSED: list[str | UID] = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian]
_COMPRESSED = [RLELossless, JPEGLSLossless, JPEGLSNearLossless, JPEG2000Lossless, JPEG2000, JPEGBaseline8Bit,
               JPEGLosslessSV1]

STATUS_OK = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_DATASET_MISMATCH = 0xA900
STATUS_CANNOT_UNDERSTAND = 0xC000
STATUS_SOP_CLASS_NOT_SUPPORTED = 0x0122
STATUS_TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122


def image_transfer_syntaxes() -> list[str | UID]:
    """Little-endian uncompressed syntaxes plus every compressed one pydicom can decode here."""
    out = list(_UNCOMPRESSED)
    for uid in _COMPRESSED:
        try:
            if get_decoder(uid).is_available:
                out.append(uid)
        except (NotImplementedError, ValueError):
            pass
    return out


def _status(code: int, comment: str) -> Dataset:
    ds = Dataset()
    ds.Status = code
    ds.ErrorComment = comment[:64]
    return ds


def _status_for(e: DicomInputError) -> int:
    return STATUS_CANNOT_UNDERSTAND if e.kind == "unreadable" else STATUS_DATASET_MISMATCH


class StorageSCP:
    """The listening side of the node (association policy and C-STORE into the spool + queue).

    Parameters
    ----------
    config : NodeConfig
    queue : JobQueue
    on_stored : callable(), optional, called after each newly stored instance (wakes the assembler).
    """

    def __init__(self, config: NodeConfig, queue: JobQueue, on_stored=None) -> None:
        self.config = config
        self.queue = queue
        self.on_stored = on_stored
        self.spool = config.storage_dir / "spool"
        self.ae = AE(ae_title=config.ae_title)
        self.ae.maximum_associations = 64
        self.ae.network_timeout = config.network_timeout
        self.ae.acse_timeout = config.network_timeout
        self.ae.dimse_timeout = config.network_timeout
        self.ae.maximum_pdu_size = config.max_pdu
        self.ae.require_called_aet = False  # checked per route in _on_requested
        image_ts = image_transfer_syntaxes()
        self._contexts = {RAW_DATA_STORAGE: build_context(RAW_DATA_STORAGE, _UNCOMPRESSED),
                          MR_IMAGE_STORAGE: build_context(MR_IMAGE_STORAGE, image_ts),
                          ENHANCED_MR_IMAGE_STORAGE: build_context(ENHANCED_MR_IMAGE_STORAGE, image_ts)}
        self._verification = build_context(VERIFICATION, _UNCOMPRESSED[:2])
        for cx in [self._verification, *self._contexts.values()]:
            self.ae.add_supported_context(str(cx.abstract_syntax), cx.transfer_syntax)
        self.server: ThreadedAssociationServer | None = None

    # --- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> tuple[str, int]:
        """Start listening (non-blocking); returns the bound (host, port)."""
        handlers: list[Any] = [(evt.EVT_REQUESTED, self._on_requested), (evt.EVT_C_ECHO, self._on_echo),
                    (evt.EVT_C_STORE, self._on_store)]
        ssl_context = self.config.tls.server_context() if self.config.tls else None
        server = self.ae.start_server((self.config.host, self.config.port), block=False,
                                      evt_handlers=handlers, ssl_context=ssl_context)
        assert server is not None  # block=False returns the running server
        self.server = server
        return server.server_address[:2]

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None

    # --- association policy --------------------------------------------------------------------------
    def _peers_allow(self, route: Route, calling: str, host: str) -> bool:
        peers = route.allowed_peers if route.allowed_peers is not None else self.config.allowed_peers
        return peers is None or any(p.allows(calling, host) for p in peers)

    def routes_for(self, called: str, calling: str, host: str) -> list[Route]:
        """Routes of ``called`` that accept associations from ``calling`` at ``host``."""
        return [r for r in self.config.routes_for(called) if self._peers_allow(r, calling, host)]

    def _on_requested(self, event) -> None:
        assoc = event.assoc
        rq = assoc.requestor.primitive
        called, calling = rq.called_ae_title.strip(), rq.calling_ae_title.strip()
        host = assoc.requestor.address
        if not self.config.routes_for(called):
            log.warning("association rejected: called AE %r has no route (calling AE %r from %s)", called, calling,
                        host)
            return self._reject(assoc, 0x07)
        routes = self.routes_for(called, calling, host)
        if not routes:
            log.warning("association rejected: calling AE %r from %s is not allowed to call %r", calling, host,
                        called)
            return self._reject(assoc, 0x03)
        assoc.acceptor.ae_title = called
        classes = {c for r in routes for c in SOP_CLASSES[r.task]}
        assoc.acceptor.supported_contexts = copy.deepcopy(  # as pynetdicom does: one copy per association
            [self._verification] + [self._contexts[c] for c in sorted(classes)])
        log.info("association accepted: %s from %s to %s", calling, host, called)

    @staticmethod
    def _reject(assoc, diagnostic: int) -> None:
        assoc.acse.send_reject(0x01, 0x01, diagnostic)  # rejected-permanent, service-user
        evt.trigger(assoc, evt.EVT_REJECTED, {})
        assoc.kill()

    def _on_echo(self, event) -> int:
        return STATUS_OK

    # --- C-STORE -------------------------------------------------------------------------------------
    def _on_store(self, event):
        assoc = event.assoc
        called, calling = assoc.acceptor.ae_title.strip(), assoc.requestor.ae_title.strip()
        host = assoc.requestor.address
        sop_hash = uid_hash(event.request.AffectedSOPInstanceUID)
        try:
            ds = event.dataset
            ds.file_meta = event.file_meta
            for _ in ds.iterall():  # pydicom parses lazily: surface every decoding error now
                pass
        except Exception as e:  # noqa: BLE001 - any decoding failure
            log.warning("C-STORE from %s@%s to %s: instance %s cannot be decoded (%s): 0xC000", calling, host,
                        called, sop_hash, e.__class__.__name__)
            return _status(STATUS_CANNOT_UNDERSTAND, "data set cannot be decoded")
        if not str(ds.get("SOPClassUID", "")) or not str(ds.get("SOPInstanceUID", "")):
            log.warning("C-STORE from %s@%s to %s: instance %s has no SOPClassUID/SOPInstanceUID (truncated or "
                        "not a data set): 0xC000", calling, host, called, sop_hash)
            return _status(STATUS_CANNOT_UNDERSTAND, "no SOPClassUID / SOPInstanceUID")
        if str(ds.SOPClassUID) != str(event.request.AffectedSOPClassUID):
            log.warning("C-STORE from %s@%s to %s: instance %s: SOPClassUID %s differs from the request's %s: "
                        "0xA900", calling, host, called, sop_hash, ds.SOPClassUID, event.request.AffectedSOPClassUID)
            return _status(STATUS_DATASET_MISMATCH, "SOPClassUID differs from the request")
        return self.store(ds, called=called, calling=calling, host=host,
                          encoded=lambda: event.encoded_dataset(include_meta=True))

    def transfer_syntaxes(self, sop_class: str) -> list[str]:
        """Transfer syntax UIDs the node accepts for ``sop_class`` (empty: the SOP class is not stored)."""
        cx = self._contexts.get(UID(sop_class))
        return [str(t) for t in cx.transfer_syntax] if cx is not None else []

    def store(self, ds: Dataset, *, called: str, calling: str, host: str, encoded,
              routes: Sequence[Route] | None = None, protocol: str = "C-STORE") -> Dataset | int:
        """Validate, route and durably store one instance; returns the DIMSE status (``0x0000`` once the file
        is fsynced in the spool and its row committed).

        ``encoded()`` returns the instance as a DICOM file (bytes). ``routes``: the candidate routes instead of
        those of ``called`` that accept ``calling`` at ``host`` (STOW-RS, where a bearer token authenticates
        the caller, passes them). ``protocol`` names the way in for the log lines.
        """
        sop_class = str(ds.get("SOPClassUID", ""))
        sop_uid = str(ds.get("SOPInstanceUID", ""))
        where = f"{protocol} {calling}@{host} -> {called} instance {uid_hash(sop_uid)}"
        candidates = self.routes_for(called, calling, host) if routes is None else routes
        routes = [r for r in candidates if sop_class in SOP_CLASSES[r.task]]
        if not routes:
            log.warning("%s: SOP class %s is accepted by no route: 0x0122", where, sop_class)
            return _status(STATUS_SOP_CLASS_NOT_SUPPORTED, f"SOP class {sop_class} not accepted")
        syntax = str(getattr(ds, "file_meta", Dataset()).get("TransferSyntaxUID", ""))
        if syntax not in self.transfer_syntaxes(sop_class):
            log.warning("%s: transfer syntax %s is not accepted for SOP class %s: 0xC122", where, syntax or "-",
                        sop_class)
            return _status(STATUS_TRANSFER_SYNTAX_NOT_SUPPORTED, f"transfer syntax {syntax or '-'} not supported")
        try:
            if sop_class == RAW_DATA_STORAGE:
                check_kspace_instance(ds)
            else:
                check_image(ds)
        except DicomInputError as e:
            code = _status_for(e)
            log.warning("%s: rejected with 0x%04X: %s", where, code, e)
            return _status(code, str(e).split(": ", 1)[-1])
        except Exception as e:  # noqa: BLE001 - malformed element values raise anything
            log.warning("%s: rejected with 0xC000: cannot interpret the data set (%s)", where, e.__class__.__name__)
            return _status(STATUS_CANNOT_UNDERSTAND, "data set cannot be interpreted")
        values = self._rule_values(ds, routes)
        route, reasons = None, []
        for r in routes:
            why = r.mismatch(values)
            if why is None:
                route = r
                break
            reasons.append(f"{r.name}: {why}")
        if route is None:
            log.warning("%s: no route accepts it (%s): 0xA900", where, "; ".join(reasons))
            return _status(STATUS_DATASET_MISMATCH, "no route accepts this instance")
        series_uid, study_uid = str(ds.SeriesInstanceUID), str(ds.StudyInstanceUID)
        if self.queue.has_instance(route.name, series_uid, sop_uid):
            log.info("%s: duplicate of a stored instance (series %s), acknowledged", where, uid_hash(series_uid))
            return STATUS_OK
        name = hashlib.sha256(sop_uid.encode()).hexdigest()[:32]
        path = self.spool / route.name / uid_hash(series_uid) / f"{name}.dcm"
        try:
            units, expected = series_extent(ds)
            write_durable(path, encoded(), mode=self.config.storage.file_mode, dir_mode=self.config.storage.dir_mode)
            self.queue.add_instance(route=route.name, series_uid=series_uid, study_uid=study_uid, sop_uid=sop_uid,
                                    path=str(path), calling_ae=calling, peer_host=host, units=units,
                                    expected_units=expected)
        except Exception as e:  # noqa: BLE001 - disk full, permission, database locked...
            log.error("%s: cannot be stored (%s: %s): 0xA700", where, e.__class__.__name__, e)
            return _status(STATUS_OUT_OF_RESOURCES, "cannot store the instance")
        if self.on_stored is not None:
            self.on_stored()
        return STATUS_OK

    @staticmethod
    def _rule_values(ds: Dataset, routes: Sequence[Route]) -> dict[str, str | None]:
        keys = {k for r in routes for k in r.rules}
        values: dict[str, str | None] = {}
        for k in keys:
            if k == "contrast":
                values[k] = guess_contrast(ds)
            else:
                v = ds.get(k)
                values[k] = None if v is None else str(v)
        return values
