"""SecAgg+ of the generator weights with Flower's own protocol code, driven from the message-API strategy.

Server side: :class:`SecAggPlusRound` runs the four stages of :class:`flwr.server.workflow.SecAggPlusWorkflow`
(setup, share keys, collect masked vectors, unmask) for one round. The workflow was written for Flower's
legacy strategies; a small adapter (:class:`_LegacyShim`) gives it the round's train messages and takes back
the unmasked aggregate. Site side: :func:`secure_aggregation_mod` applies Flower's ``secaggplus_mod`` to the
messages of the protocol (those carrying its ``secaggplus`` config record), so plain FedAvg runs are unchanged.

What the coordinator sees per site: two public keys, encrypted key shares for other sites, a vector of
masked integers (uniformly random modulo 2**32 on its own), the scalar training metrics and the number of
examples. Only the sum over sites can be unmasked. The weighting of FedAvg is kept: each site multiplies its
weights by ``num_examples / max_weight`` and sends that factor too (Flower's ``factor_combine``); the
workflow divides the summed weighted weights by the summed factors. Differential privacy (DP-SGD in the
synthesis family) happens at the site before any of this, so its epsilon is unchanged; critics and other
private state never enter the reply.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.common import Code, FitIns, FitRes, Parameters, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common.recorddict_compat import fitres_to_recorddict
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.server.workflow.secure_aggregation.secaggplus_workflow import WorkflowState
from flwr.serverapp import Grid

from training.federation.config import SecureAggregationConfig
from training.federation.family import Arrays

log = logging.getLogger(__name__)
MODULUS = 2**32


class SecureAggregationError(RuntimeError):
    """The SecAgg+ protocol could not finish a round (fewer sites than the threshold answered, ...);
    ``failures`` holds the sites' error replies (a site's StopRun among them)."""

    def __init__(self, message: str, failures: list[Exception]) -> None:
        super().__init__(message)
        self.failures = failures


def is_secure_message(msg: Message) -> bool:
    """Whether ``msg`` belongs to the SecAgg+ protocol (carries its config record)."""
    return RECORD_KEY_CONFIGS in msg.content.config_records


def secure_aggregation_mod(msg: Message, context: Context, call_next) -> Message:
    """ClientApp mod: Flower's ``secaggplus_mod`` for SecAgg+ messages; every other message passes through."""
    if is_secure_message(msg):
        return secaggplus_mod(msg, context, call_next)
    return call_next(msg, context)


def site_reply_content(arrays: Arrays, num_examples: int, metrics: dict, cfg: SecureAggregationConfig,
                       site: str) -> RecordDict:
    """The reply of a site's training under SecAgg+ (``FitRes`` form, which ``secaggplus_mod`` masks).

    Raises ValueError (naming the site and the array) when a weighted weight would be clipped or the
    example count exceeds ``max_weight``: both would change the aggregate silently."""
    if num_examples > cfg.max_weight:
        raise ValueError(f"site {site!r}: {num_examples} examples this round exceed "
                         f"federation.secure_aggregation.max_weight={cfg.max_weight:g}")
    ratio = num_examples / cfg.max_weight
    for name, a in arrays.items():
        peak = float(np.max(np.abs(a))) * ratio if a.size else 0.0
        if peak > cfg.clipping_range:
            raise ValueError(f"site {site!r}: array {name!r} reaches {peak:.3g} after weighting, beyond "
                             f"federation.secure_aggregation.clipping_range={cfg.clipping_range:g}")
    fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(list(arrays.values())), int(num_examples),
                    {k: float(v) for k, v in metrics.items()})
    return fitres_to_recorddict(fitres, keep_input=False)


@dataclass
class _LegacyShim:
    """The parts of Flower's ``LegacyContext`` that the SecAgg+ workflow's stages use."""

    server_round: int
    arrays: ArrayRecord
    node_ids: list[int]
    results: list = field(default_factory=list)

    def __post_init__(self) -> None:
        self.state = RecordDict({MAIN_CONFIGS_RECORD: ConfigRecord({WorkflowKey.CURRENT_ROUND: self.server_round}),
                                 MAIN_PARAMS_RECORD: self.arrays})
        self.strategy = SimpleNamespace(configure_fit=self._configure_fit, aggregate_fit=self._aggregate_fit)
        self.client_manager = SimpleNamespace(num_available=lambda: len(self.node_ids))
        self.history = SimpleNamespace(add_metrics_distributed_fit=lambda **_: None)

    def _configure_fit(self, server_round: int, parameters: Parameters, client_manager) -> list:
        return [(SimpleNamespace(node_id=n), FitIns(parameters, {})) for n in self.node_ids]

    def _aggregate_fit(self, server_round: int, results: list, failures: list) -> tuple:
        self.results = results
        return None, {}


class SecAggPlusRound:
    """One round of SecAgg+ over the training nodes.

    Parameters
    ----------
    cfg : the run's ``federation.secure_aggregation`` section.
    sites : the training sites (their number fixes shares, threshold and quantization).
    timeout : seconds to wait for each stage's replies.
    """

    def __init__(self, cfg: SecureAggregationConfig, sites: tuple[str, ...], timeout: float | None) -> None:
        shares, threshold = cfg.shares_and_threshold(sites)
        self.threshold = threshold
        # Fractions: Flower turns them back into these counts and, unlike integer counts, allows
        # 2 sites and threshold == shares.
        self.workflow = SecAggPlusWorkflow(
            num_shares=shares / len(sites), reconstruction_threshold=threshold / shares,
            max_weight=cfg.max_weight, clipping_range=cfg.clipping_range,
            quantization_range=2 ** cfg.bits(len(sites)), modulus_range=MODULUS, timeout=timeout,
        )

    def run(self, grid: Grid, server_round: int, arrays: ArrayRecord,
            contents: dict[int, RecordDict]) -> tuple[list[np.ndarray], list[tuple[int, FitRes]], list[Exception]]:
        """Run the protocol with ``contents`` (node id -> its train message content); returns the
        FedAvg-weighted average of the sites' arrays (in their order), (node id, FitRes) per site (numbers
        only: their parameters are the aggregate) and the sites' error replies. Raises SecureAggregationError if a stage fails."""
        shim = _LegacyShim(server_round, arrays, sorted(contents))
        state = WorkflowState()
        stages = (self.workflow.setup_stage, self.workflow.share_keys_stage,
                  self.workflow.collect_masked_vectors_stage, self.workflow.unmask_stage)
        for i, stage in enumerate(stages):
            if i == 2:  # the train messages proper: the workflow adds its config record to these contents
                state.nid_to_fitins = dict(contents)
            if not stage(grid, shim, state):  # type: ignore[arg-type]
                raise SecureAggregationError(
                    f"SecAgg+ halted in stage {stage.__name__} of round {server_round}: "
                    f"{len(state.active_node_ids)} of {len(contents)} sites answered, the threshold is "
                    f"{self.threshold}; site errors: {[str(f)[:300] for f in state.failures]}", list(state.failures))
        if not shim.results:
            raise SecureAggregationError(f"SecAgg+ round {server_round} produced no aggregate", list(state.failures))
        aggregate = parameters_to_ndarrays(shim.results[0][1].parameters)
        per_site = [(proxy.node_id, fitres) for proxy, fitres in shim.results]
        return aggregate, per_site, list(state.failures)
