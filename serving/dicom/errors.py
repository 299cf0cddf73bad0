"""The one exception type of the shared DICOM layer.

REST turns a :class:`DicomInputError` into a 4xx answer, the DICOM node into a DIMSE failure status
(``0xA900`` "data set does not match SOP class" for ``kind`` ``missing`` / ``invalid`` / ``mismatch``,
``0xC000`` "cannot understand" for ``unreadable``). The message always names the attribute (DICOM
keyword or private-block field) and what was expected.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mrcore.contract import ContractError

__all__ = ["DicomInputError"]

_KINDS = ("missing", "invalid", "mismatch", "unreadable", "unsupported")


class DicomInputError(ValueError):
    """A DICOM input the service cannot use.

    Parameters
    ----------
    message : str
        What was expected and what came, e.g. ``"PixelData: 8192 bytes, expected Rows x Columns x 2 = 8192"``.
    attribute : str, optional
        The DICOM keyword (``"Rows"``) or private field (``"KSpaceData"``) at fault.
    kind : str
        ``"missing"`` (required attribute absent), ``"invalid"`` (value wrong), ``"mismatch"``
        (instances of one series disagree, sizes do not match), ``"unreadable"`` (not parseable DICOM),
        ``"unsupported"`` (valid DICOM the service does not handle: SOP class, photometric interpretation...).
    contract : ContractError, optional
        The k-space / mask contract's verdict (:mod:`mrcore.contract`) when the DICOM carried k-space or a mask
        that breaks it: REST answers it exactly as it answers the same array sent as ``.npy``.
    """

    def __init__(self, message: str, *, attribute: str | None = None, kind: str = "invalid",
                 contract: ContractError | None = None) -> None:
        if kind not in _KINDS:
            raise ValueError(f"DicomInputError kind must be one of {_KINDS}, got {kind!r}")
        super().__init__(message)
        self.attribute = attribute
        self.kind = kind
        self.contract = contract
