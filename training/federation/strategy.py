"""FedAvg (weighted by number of examples, as FL-MR) with the bookkeeping a multi-hospital run needs.

On top of Flower's :class:`~flwr.serverapp.strategy.FedAvg` it

* numbers rounds globally (``global-round``) so a resumed run continues the count;
* ships the run configuration to every site in the round's ``ConfigRecord``;
* refuses a reply whose arrays are not exactly the expected shared weights (names, shapes, dtypes):
  a site that tried to send its critic, a discriminator or data would be rejected, not averaged;
* with ``federation.compression`` (:mod:`.compression`), decodes each site's compressed weight delta back to
  its weights first (a payload that is not exactly the configured one is refused the same way);
* keeps per-site training and validation metrics for the run's metrics file;
* stops the run when a site replies with a :class:`~training.federation.family.StopRun` error (for
  example a privacy budget that the next round would exceed); other failed replies are left out;
* with secure aggregation (``federation.secure_aggregation.enabled``): runs each round's training as SecAgg+
  (:mod:`training.federation.secure`), so it only ever holds the weighted average, never a site's weights;
  per-site scalar metrics still arrive;
* with a target site (FL-MRCM): learns which node is which site (a ``site`` query), asks the target node
  for its latent features each round (a ``latent-features`` query, the round's shared weights attached),
  checks the reply holds only those, and sends them to the training sites with their train message; the
  target node is never asked to train or evaluate.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import sample_nodes

from training.federation.compression import CompressionConfig
from training.federation.family import StopRun
from training.federation.payload import centre_receive_weights
from training.federation.records import TARGET_LATENTS, from_record, to_record
from training.federation.secure import SecAggPlusRound, SecureAggregationError

log = logging.getLogger(__name__)


class SharedWeightsViolation(RuntimeError):
    """A site's reply carried arrays other than the shared weights."""


class SiteFedAvg(FedAvg):
    """FedAvg over the shared weights only; see the module docstring.

    Parameters
    ----------
    expected : name -> (shape, dtype) of the shared arrays every reply must carry exactly.
    run_config_yaml : the run configuration, sent to the sites each round.
    round_offset : rounds already done before this start (resume).
    num_sites : number of training sites (all are sampled every round).
    target_site : FL-MRCM's target site (one more node, which only answers feature queries), or None.
    query_timeout : seconds to wait for the answers to a query.
    secure : the SecAgg+ driver when secure aggregation is on, else None.
    """

    def __init__(self, expected: dict[str, tuple[tuple[int, ...], str]], run_config_yaml: str,
                 round_offset: int, num_sites: int, evaluate_sites: bool = True, target_site: str | None = None,
                 query_timeout: float = 3600.0, secure: SecAggPlusRound | None = None,
                 compression: CompressionConfig | None = None) -> None:
        super().__init__(
            fraction_train=1.0,
            fraction_evaluate=1.0 if evaluate_sites else 0.0,
            min_train_nodes=num_sites,
            min_evaluate_nodes=num_sites,
            min_available_nodes=num_sites + (1 if target_site else 0),
            weighted_by_key="num-examples",
        )
        self.expected = expected
        self.run_config_yaml = run_config_yaml
        self.round_offset = round_offset
        self.target_site = target_site
        self.query_timeout = query_timeout
        self.secure = secure
        self._secure_result: tuple[ArrayRecord, dict[str, dict[str, float]]] | None = None
        self.compression = compression or CompressionConfig()
        self.round_arrays: dict[str, np.ndarray] = {}
        self.node_sites: dict[int, str] = {}
        self.site_train_metrics: dict[int, dict[str, dict[str, float]]] = {}
        self.site_eval_metrics: dict[int, dict[str, dict[str, float]]] = {}

    def _with_run_info(self, server_round: int, config: ConfigRecord) -> ConfigRecord:
        config["global-round"] = self.round_offset + server_round
        config["run-config"] = self.run_config_yaml
        return config

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        config = self._with_run_info(server_round, config)
        self.round_arrays = from_record(arrays)  # compressed replies are deltas from these
        if self.target_site is None and self.secure is None:
            return super().configure_train(server_round, arrays, config, grid)
        config["server-round"] = server_round
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        if self.target_site is not None:
            record[TARGET_LATENTS] = self.query_target_latents(grid, arrays, config)
        if self.secure is not None:
            self.secure_train(server_round, arrays, record, grid)
            return []  # the protocol has run; aggregate_train returns its result
        return self._construct_messages(record, self.source_nodes(grid), MessageType.TRAIN)

    def secure_train(self, server_round: int, arrays: ArrayRecord, record: RecordDict, grid: Grid) -> None:
        """Run the round's training under SecAgg+; keep the aggregate and the sites' scalar metrics."""
        assert self.secure is not None
        nodes = self.source_nodes(grid)
        contents = {n: RecordDict({k: v for k, v in record.items()}) for n in nodes}
        try:
            aggregate, per_node, failures = self.secure.run(grid, server_round, arrays, contents)
        except SecureAggregationError as exc:  # a site's StopRun (privacy budget) ends the run as in FedAvg
            for failure in exc.failures:
                raise_if_stop_text(str(failure))
            raise
        for failure in failures:
            raise_if_stop_text(str(failure))
        names = list(self.expected)
        if len(aggregate) != len(names):
            raise SharedWeightsViolation(f"SecAgg+ aggregate has {len(aggregate)} arrays, expected {len(names)}")
        shared = {}
        for name, a in zip(names, aggregate, strict=True):
            shape, dtype = self.expected[name]
            if tuple(a.shape) != tuple(shape):
                raise SharedWeightsViolation(f"SecAgg+ aggregate array {name!r} is {a.shape}, expected {tuple(shape)}")
            shared[name] = a.astype(dtype)
        sites = self.identify_nodes(grid)
        metrics = {sites.get(n, f"node-{n}"): {**{k: float(v) for k, v in fr.metrics.items()},  # type: ignore[arg-type]
                                                "num-examples": fr.num_examples} for n, fr in per_node}
        self._secure_result = (to_record(shared), metrics)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        config = self._with_run_info(server_round, config)
        if self.target_site is None or self.fraction_evaluate == 0.0:
            return super().configure_evaluate(server_round, arrays, config, grid)
        config["server-round"] = server_round
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return self._construct_messages(record, self.source_nodes(grid), MessageType.EVALUATE)

    # -- FL-MRCM: which node is the target, and its latent features ------------------------------------
    def identify_nodes(self, grid: Grid) -> dict[int, str]:
        """node id -> site name of every connected node (asked once; again when the nodes change)."""
        _, nodes = sample_nodes(grid, self.min_available_nodes, self.min_available_nodes)  # waits for them
        if set(nodes) != set(self.node_sites):
            self.node_sites = identify_sites(grid, nodes, self.run_config_yaml, self.query_timeout)
            targets = [n for n, s in self.node_sites.items() if s == self.target_site]
            if self.target_site is not None and len(targets) != 1:
                raise RuntimeError(f"FL-MRCM needs exactly one node of target site {self.target_site!r}; "
                                   f"the nodes are {sorted(self.node_sites.values())}")
            log.info("nodes: %s", {s: n for n, s in self.node_sites.items()})
        return self.node_sites

    def source_nodes(self, grid: Grid) -> list[int]:
        """Node ids of the training (source) sites."""
        return sorted(n for n, s in self.identify_nodes(grid).items() if s != self.target_site)

    def query_target_latents(self, grid: Grid, arrays: ArrayRecord, config: ConfigRecord) -> ArrayRecord:
        """Ask the target node for its latent features under ``arrays``; returns them as an ArrayRecord."""
        target = next(n for n, s in self.identify_nodes(grid).items() if s == self.target_site)
        query = ConfigRecord({**dict(config), "query": "latent-features"})
        msg = Message(content=RecordDict({self.arrayrecord_key: arrays, "config": query}),
                      message_type=MessageType.QUERY, dst_node_id=target)
        replies = list(grid.send_and_receive([msg], timeout=self.query_timeout))
        if not replies or replies[0].has_error():
            reason = replies[0].error.reason if replies else "no reply"
            raise RuntimeError(f"target site {self.target_site!r} did not send its latent features: {reason}")
        record = replies[0].content.array_records.get(TARGET_LATENTS)
        if record is None or list(record.keys()) != ["latents"] or len(replies[0].content.array_records) != 1:
            raise SharedWeightsViolation(f"the target site's reply must carry exactly {TARGET_LATENTS}/latents")
        if record["latents"].numpy().ndim != 4:
            raise SharedWeightsViolation("the target site's latents must be [N, C, h, w]")
        return record

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        replies = list(replies)
        if self.secure is not None:
            assert self._secure_result is not None and not replies
            arrays, per_site = self._secure_result
            self._secure_result = None
            self.site_train_metrics[self.round_offset + server_round] = per_site
            return arrays, None
        per_site = {}
        for msg in replies:
            if msg.has_error():
                raise_if_stop(msg)
                continue
            if self.compression.kind != "none":  # a compressed delta: back to the site's weights
                try:
                    weights = centre_receive_weights(from_record(msg.content["arrays"]), self.round_arrays, self.compression)
                except ValueError as exc:
                    raise SharedWeightsViolation(f"site {site_of(msg)!r}: {exc}") from None
                msg.content["arrays"] = to_record(weights)
            check_shared_arrays(msg.content["arrays"], self.expected)
            per_site[site_of(msg)] = dict(msg.content["metrics"])
        self.site_train_metrics[self.round_offset + server_round] = per_site
        return super().aggregate_train(server_round, replies)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]):
        replies = list(replies)
        self.site_eval_metrics[self.round_offset + server_round] = {
            site_of(m): dict(m.content["metrics"]) for m in replies if not m.has_error()
        }
        return super().aggregate_evaluate(server_round, replies)


def identify_sites(grid: Grid, nodes: list[int], run_config_yaml: str, timeout: float) -> dict[int, str]:
    """node id -> site name of ``nodes``, from their answers to a ``site`` query (RuntimeError if one fails)."""
    config = ConfigRecord({"query": "site", "run-config": run_config_yaml})
    messages = [Message(content=RecordDict({"config": config}), message_type=MessageType.QUERY, dst_node_id=n)
                for n in nodes]
    replies = list(grid.send_and_receive(messages, timeout=timeout))
    failed = [m for m in replies if m.has_error()]
    if failed or len(replies) != len(nodes):
        reason = failed[0].error.reason if failed else f"{len(replies)} of {len(nodes)} nodes answered"
        raise RuntimeError(f"could not identify the sites of the federation's nodes: {reason}")
    return {m.metadata.src_node_id: site_of(m) for m in replies}


def raise_if_stop(msg: Message) -> None:
    """Re-raise a site's :class:`~training.federation.family.StopRun` (found in an error reply) at the coordinator."""
    raise_if_stop_text(str(msg.error.reason))


def raise_if_stop_text(reason: str) -> None:
    """Raise :class:`~training.federation.family.StopRun` if ``reason`` (an error reply's text) carries one."""
    if StopRun.MARKER in reason:
        text = reason[reason.index(StopRun.MARKER):]
        raise StopRun(text.removesuffix("'>").strip())


def site_of(msg: Message) -> str:
    """The site name a reply declares in its ``site`` ConfigRecord."""
    info = msg.content.config_records.get("site")
    return str(info["name"]) if info is not None else f"node-{msg.metadata.src_node_id}"


def check_shared_arrays(record: ArrayRecord, expected: dict[str, tuple[tuple[int, ...], str]]) -> None:
    """Raise :class:`SharedWeightsViolation` unless ``record`` holds exactly the expected arrays."""
    got = set(record.keys())
    want = set(expected)
    if got != want:
        extra = sorted(got - want)[:5]
        missing = sorted(want - got)[:5]
        raise SharedWeightsViolation(f"reply arrays differ from the shared weights: extra {extra}, missing {missing}")
    for name, arr in record.items():
        shape, dtype = expected[name]
        a = arr.numpy()
        if tuple(a.shape) != tuple(shape) or str(a.dtype) != dtype:
            raise SharedWeightsViolation(
                f"reply array {name!r} is {a.dtype} {a.shape}, expected {dtype} {tuple(shape)}"
            )


def describe(arrays: dict[str, np.ndarray]) -> dict[str, tuple[tuple[int, ...], str]]:
    """name -> (shape, dtype) of a dict of arrays."""
    return {k: (tuple(v.shape), str(v.dtype)) for k, v in arrays.items()}
