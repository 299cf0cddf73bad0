"""FedAvg (weighted by number of examples, as FL-MR) with the bookkeeping a multi-hospital run needs.

On top of Flower's :class:`~flwr.serverapp.strategy.FedAvg` it

* numbers rounds globally (``global-round``) so a resumed run continues the count;
* ships the run configuration to every site in the round's ``ConfigRecord``;
* refuses a reply whose arrays are not exactly the expected shared weights (names, shapes, dtypes):
  a site that tried to send its critic, a discriminator or data would be rejected, not averaged;
* keeps per-site training and validation metrics for the run's metrics file;
* stops the run when a site replies with a :class:`~training.federation.family.StopRun` error (for
  example a privacy budget that the next round would exceed); other failed replies are left out.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from training.federation.family import StopRun

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
    """

    def __init__(self, expected: dict[str, tuple[tuple[int, ...], str]], run_config_yaml: str,
                 round_offset: int, num_sites: int, evaluate_sites: bool = True) -> None:
        super().__init__(
            fraction_train=1.0,
            fraction_evaluate=1.0 if evaluate_sites else 0.0,
            min_train_nodes=num_sites,
            min_evaluate_nodes=num_sites,
            min_available_nodes=num_sites,
            weighted_by_key="num-examples",
        )
        self.expected = expected
        self.run_config_yaml = run_config_yaml
        self.round_offset = round_offset
        self.site_train_metrics: dict[int, dict[str, dict[str, float]]] = {}
        self.site_eval_metrics: dict[int, dict[str, dict[str, float]]] = {}

    def _with_run_info(self, server_round: int, config: ConfigRecord) -> ConfigRecord:
        config["global-round"] = self.round_offset + server_round
        config["run-config"] = self.run_config_yaml
        return config

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        return super().configure_train(server_round, arrays, self._with_run_info(server_round, config), grid)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return super().configure_evaluate(server_round, arrays, self._with_run_info(server_round, config), grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        replies = list(replies)
        per_site = {}
        for msg in replies:
            if msg.has_error():
                raise_if_stop(msg)
                continue
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


def raise_if_stop(msg: Message) -> None:
    """Re-raise a site's :class:`~training.federation.family.StopRun` (found in an error reply) at the coordinator."""
    reason = str(msg.error.reason)
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
