"""The ivshmem PCI endpoint, revision 1 (QEMU ``ivshmem-doorbell`` / ``ivshmem-plain``).

:class:`IvshmemPci` (:mod:`.device`) behind the transaction interface of
:mod:`.tlp`; the config header comes from :func:`ivhw.sw.pcicfg.config_header`,
the same builder the model uses.
"""

from __future__ import annotations

from .device import IvshmemPci
from .tlp import (
    Completion,
    CplStatus,
    MsiMessage,
    ReqKind,
    Request,
    completion_signature,
    msi_signature,
    request_signature,
)

__all__ = [
    "Completion",
    "CplStatus",
    "IvshmemPci",
    "MsiMessage",
    "ReqKind",
    "Request",
    "completion_signature",
    "msi_signature",
    "request_signature",
]
