"""What the coordinator sends and receives each round, measured at its ``Grid``.

:class:`CountingGrid` wraps the ServerApp's grid and, per message type, adds up the payload bytes of every
message sent and every reply (array data, bytes and strings of config records, 8 bytes per number; no
protocol framing), the seconds spent waiting for training replies, and the names of the arrays each site's
training reply carried. The coordinator writes one summary per round into ``metrics.jsonl`` (``traffic``):
under SecAgg+ the ``received_arrays`` of every site are empty, since only masked integers arrive.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable

from flwr.app import Message, MessageType, RecordDict
from flwr.serverapp import Grid


def payload_bytes(content: RecordDict) -> int:
    """Bytes of a message's records: array data, bytes/str values of config records, 8 per number."""
    total = 0
    for record in content.values():
        for value in record.values():
            total += _value_bytes(value)
    return total


def _value_bytes(value) -> int:
    data = getattr(value, "data", None)
    if isinstance(data, bytes):
        return len(data)
    if isinstance(value, (bytes, str)):
        return len(value)
    if isinstance(value, list):
        return sum(_value_bytes(v) for v in value)
    return 8


class CountingGrid:
    """A :class:`flwr.serverapp.Grid` that counts its traffic (see the module docstring); everything else is
    delegated to the wrapped grid."""

    def __init__(self, grid: Grid) -> None:
        self._grid = grid
        self.reset()

    def reset(self) -> None:
        """Start a new round's counts."""
        self.sent: dict[str, int] = defaultdict(int)
        self.received: dict[str, int] = defaultdict(int)
        self.train_seconds = 0.0
        self.received_arrays: dict[int, list[str]] = {}
        self.node_sites: dict[int, str] = {}

    def __getattr__(self, name: str):
        return getattr(self._grid, name)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Send ``messages``, wait for the replies (as the wrapped grid), and count both."""
        messages = list(messages)
        kinds = {m.metadata.message_type for m in messages}
        for m in messages:
            self.sent[m.metadata.message_type] += payload_bytes(m.content)
        t0 = time.perf_counter()
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        if MessageType.TRAIN in kinds:
            self.train_seconds += time.perf_counter() - t0
        for r in replies:
            kind = r.metadata.message_type
            if r.has_error():
                continue
            self.received[kind] += payload_bytes(r.content)
            site = r.content.config_records.get("site")
            if site is not None:
                self.node_sites[r.metadata.src_node_id] = str(site["name"])
            if kind == MessageType.TRAIN:
                names = [f"{rk}/{k}" for rk, rec in r.content.array_records.items() for k in rec.keys()]
                self.received_arrays.setdefault(r.metadata.src_node_id, []).extend(names)
        return replies

    def summary(self) -> dict:
        """This round's counts (sites named by the ``site`` record of their replies)."""
        node_sites = self.node_sites
        return {
            "train_sent_bytes": self.sent.get(MessageType.TRAIN, 0),
            "train_received_bytes": self.received.get(MessageType.TRAIN, 0),
            "train_seconds": round(self.train_seconds, 3),
            "other_bytes": sum(v for k, v in self.sent.items() if k != MessageType.TRAIN)
            + sum(v for k, v in self.received.items() if k != MessageType.TRAIN),
            "received_arrays": {node_sites.get(n, f"node-{n}"): names for n, names in self.received_arrays.items()},
        }
