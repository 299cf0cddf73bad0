"""Isik et al.'s gradient averaging (``federation.mode: gradient_average``) through Flower: between real
hospitals (``flwr run`` on a SuperLink with one SuperNode per site, TLS and authenticated sites) or in
Flower's simulation. One Flower round is one synchronisation.

Per round ``g`` (checkpoint, metrics row, evaluation: one pass over each site's training data, as in
:mod:`training.federation.gradient_average`):

1. a ``gradient-batches`` query: each site answers how many batches its training data makes this round;
   the round has ``syncs = ceil(max / sync_every)`` synchronisations (the first one goes to every connected
   node and tells which node is which site);
2. per synchronisation ``j``, a train message to every site with the current generator weights and
   ``global-round``, ``sync`` (1-based), ``syncs`` and ``send`` (the send number of the error-feedback
   residual). The site (``training.federation.apps``) rebuilds itself from its private state, runs
   :func:`~training.federation.gradient_average.site_sync` (gradient over its next ``sync_every`` batches,
   compressed) and replies with the payload only; after the last one it replies with its mean losses too.
   The centre takes the payloads' wire bytes, counts them (``bytes_sent``) and runs
   :func:`~training.federation.gradient_average.centre_step`, the in-process engine's step;
3. optionally an evaluate message per site (validation numbers only); then the same checkpoint, Adam state
   and metrics row as in process, plus the round's ``traffic`` measured at the grid.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import yaml
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy.strategy_utils import sample_nodes

from training.federation.compression import CompressionConfig, shapes_of
from training.federation.config import linear_lr_factor
from training.federation.family import Arrays
from training.federation.gradient_average import centre_step, finish_round, round_train_metrics, start_centre
from training.federation.payload import to_bytes
from training.federation.records import from_record, to_record
from training.federation.rundir import start_run
from training.federation.strategy import SharedWeightsViolation, raise_if_stop, site_of
from training.federation.traffic import CountingGrid

log = logging.getLogger(__name__)

#: the query a site answers with its number of training batches in a round
BATCHES_QUERY = "gradient-batches"


def run_gradient_coordinator(grid: Grid, run_cfg: dict,
                             progress: Callable[[int, dict], None] | None = None) -> Arrays:
    """Run (or resume) ``run_cfg``'s gradient-averaging rounds with the sites' nodes on ``grid``; return the
    final generator weights."""
    family, run_dir, arrays, offset = start_run(run_cfg)
    fed, objective = run_cfg["federation"], run_cfg["objective"]
    total, k = int(fed["rounds"]), int(fed.get("sync_every", 1))
    if offset >= total:
        log.info("all %d rounds already done", total)
        return arrays
    comp = CompressionConfig(**fed.get("compression", {}))
    text = yaml.safe_dump(run_cfg, sort_keys=True)
    timeout = float(fed.get("round_timeout_s", 3600))
    counting = CountingGrid(grid)
    centre, shapes = start_centre(run_dir, arrays, objective, offset), shapes_of(arrays)
    nodes: dict[str, int] | None = None
    for g in range(offset + 1, total + 1):
        t0 = time.perf_counter()
        lr_factor = linear_lr_factor(g, total, float(objective.get("lr_final", 1.0)))
        nodes, batches = count_batches(counting, family.train_sites, nodes, text, g, timeout)
        syncs = math.ceil(max(batches.values()) / k)
        sent, losses = dict.fromkeys(nodes, 0), {}
        for j in range(1, syncs + 1):
            config = ConfigRecord({"run-config": text, "global-round": g, "sync": j, "syncs": syncs,
                                   "send": (g - 1) * syncs + j})
            replies = ask(counting, nodes, MessageType.TRAIN, {"arrays": to_record(centre.arrays()), "config": config},
                          timeout)
            received = []
            for name, reply in replies.items():
                data, examples, metrics = gradient_reply(name, reply)
                sent[name] += len(data)
                received.append((name, data, examples))
                if j == syncs:
                    losses[name] = metrics
            try:
                centre_step(centre, received, shapes, comp, lr_factor)
            except ValueError as exc:  # a payload that is not the configured compression of the generator
                raise SharedWeightsViolation(str(exc)) from None
        arrays = centre.arrays()
        val = {}
        if fed.get("evaluate_sites", True):
            config = ConfigRecord({"run-config": text, "global-round": g})
            val = {s: dict(r.content["metrics"]) for s, r in
                   ask(counting, nodes, MessageType.EVALUATE, {"arrays": to_record(arrays), "config": config},
                       timeout).items()}
        finish_round(family, run_dir, g, arrays, centre, {"train": round_train_metrics(losses, sent, syncs),
                                                          "val": val, "traffic": counting.summary()}, t0, progress)
        counting.reset()
    return arrays


def count_batches(grid: Grid, sites: tuple[str, ...], nodes: dict[str, int] | None, run_config_yaml: str,
                  g: int, timeout: float) -> tuple[dict[str, int], dict[str, int]]:
    """``(site -> node id, site -> its batches in round g)`` from the ``gradient-batches`` query. With ``nodes``
    None it goes to every connected node (waiting until there are as many as ``sites``), and the replies'
    site names tell which node is which site (RuntimeError naming them unless each site has one node)."""
    config = ConfigRecord({"run-config": run_config_yaml, "global-round": g, "query": BATCHES_QUERY})
    if nodes is None:
        _, ids = sample_nodes(grid, len(sites), len(sites))
        replies = ask(grid, {f"node {n}": n for n in ids}, MessageType.QUERY, {"config": config}, timeout, check=False)
        named = {site_of(r): r for r in replies.values()}
        if sorted(site_of(r) for r in replies.values()) != sorted(sites):
            raise RuntimeError(f"gradient averaging needs one node per training site {list(sites)}; the nodes are "
                               f"{sorted(site_of(r) for r in replies.values())}")
        log.info("nodes: %s", {s: r.metadata.src_node_id for s, r in named.items()})
        replies = {s: named[s] for s in sites}
        nodes = {s: r.metadata.src_node_id for s, r in replies.items()}
    else:
        replies = ask(grid, nodes, MessageType.QUERY, {"config": config}, timeout)
    return nodes, {s: int(r.content["metrics"]["num-batches"]) for s, r in replies.items()}  # type: ignore[arg-type]


def ask(grid: Grid, nodes: dict[str, int], kind: str, records: dict, timeout: float,
        check: bool = True) -> dict[str, Message]:
    """Send ``records`` (record name -> record) as a ``kind`` message to every site's node; return the replies
    by site, in ``nodes``' order. A site's StopRun ends the run; any other error or a missing reply raises
    RuntimeError naming the site, and so does (with ``check``) a reply from another site than the node's."""
    messages = [Message(content=RecordDict(dict(records)), message_type=kind, dst_node_id=n) for n in nodes.values()]
    replies = {m.metadata.src_node_id: m for m in grid.send_and_receive(messages, timeout=timeout)}
    out = {}
    for site, node in nodes.items():
        reply = replies.get(node)
        if reply is None:
            raise RuntimeError(f"site {site!r} sent no reply to the {kind} message within {timeout:.0f} s")
        if reply.has_error():
            raise_if_stop(reply)
            raise RuntimeError(f"site {site!r} failed the {kind} message: {reply.error.reason}")
        if check and site_of(reply) != site:
            raise RuntimeError(f"node {node} of site {site!r} replied as site {site_of(reply)!r}")
        out[site] = reply
    return out


def gradient_reply(site: str, reply: Message) -> tuple[bytes, int, dict[str, float]]:
    """A site's synchronisation reply -> (its payload's wire bytes, examples, its other metrics). Raises
    SharedWeightsViolation unless the reply carries exactly one array record, ``arrays``."""
    records = list(reply.content.array_records)
    if records != ["arrays"]:
        raise SharedWeightsViolation(f"site {site!r}: a gradient reply carries the array record 'arrays' only, "
                                     f"got {records}")
    metrics = dict(reply.content["metrics"])
    examples = int(metrics.pop("num-examples"))
    return to_bytes(from_record(reply.content["arrays"])), examples, {
        k: float(v) for k, v in metrics.items() if k != "bytes_sent"}  # type: ignore[arg-type]
