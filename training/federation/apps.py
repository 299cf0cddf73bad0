"""The Flower apps: one ``ClientApp`` per hospital and the coordinator's ``ServerApp``.

The same objects run in Flower's simulation (:mod:`training.federation.simulation`) and in deployment
(``flower-superlink`` + one ``flower-supernode`` per hospital, see ``docs/federation.md``).

A site learns which hospital it is from its node configuration: ``site=<name>`` (deployment) or
``partition-id`` (simulation: the i-th training site of the config, then FL-MRCM's target site). Its
private state directory is ``state-dir`` from the node configuration, or ``<run dir>/sites/<site>`` in
simulation. Besides train and evaluate messages a site answers three queries: ``site`` (its name), at FL-MRCM's target
site only ``latent-features`` (pooled latents of its own slices under the sent weights), and in gradient
averaging ``gradient-batches`` (its number of training batches this round). In gradient averaging a train
message is one synchronisation (:mod:`training.federation.gradient_flower`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
import yaml
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from training.federation.coordinator import run_coordinator
from training.federation.gradient_average import site_sync
from training.federation.gradient_flower import BATCHES_QUERY
from training.federation.payload import site_send_weights
from training.federation.records import TARGET_LATENTS, audit_outgoing, from_record, to_record
from training.federation.registry import family_from_config
from training.federation.runconfig import load_run_config
from training.federation.secure import is_secure_message, secure_aggregation_mod, site_reply_content

log = logging.getLogger(__name__)
client_app = ClientApp(mods=[secure_aggregation_mod])


def _site_and_state_dir(context: Context, run_cfg: dict, family) -> tuple[str, Path]:
    node = context.node_config
    sites = family.federation_sites
    if "site" in node:
        site = str(node["site"])
        if site not in sites:
            raise ValueError(f"node-config site={site!r} is not a site of this run: {sites}")
    else:
        pid = int(node["partition-id"])
        if not 0 <= pid < len(sites):
            raise ValueError(f"partition-id {pid} out of range for the {len(sites)} sites of this run")
        site = sites[pid]
    state_root = node.get("state-dir")
    state_dir = Path(str(state_root)) if state_root else Path(run_cfg["run_dir"]) / "sites" / site
    return site, state_dir


def _open(msg: Message, context: Context):
    """(config record, family, site name, private state dir) of an incoming message at this node."""
    torch.set_num_threads(int(os.environ.get("MRI_SITE_THREADS", "1")))
    cfg_record = msg.content["config"]
    run_cfg = yaml.safe_load(str(cfg_record["run-config"]))
    family = family_from_config(run_cfg)
    site, state_dir = _site_and_state_dir(context, run_cfg, family)
    return cfg_record, family, site, state_dir


def _handle(msg: Message, context: Context, train: bool) -> Message:
    cfg_record, family, site, state_dir = _open(msg, context)
    if site == family.target_site:
        raise ValueError(f"site {site!r} is FL-MRCM's target: it trains and evaluates nothing")
    global_round = int(cfg_record["global-round"])
    arrays = from_record(msg.content["arrays"])
    if train and family.cfg.federation.mode == "gradient_average":
        return _gradient_sync(msg, cfg_record, family, site, state_dir, arrays)
    if train:
        latents = msg.content.array_records.get(TARGET_LATENTS)
        target = latents["latents"].numpy() if latents is not None else None
        update = family.train_site(site, arrays, global_round, state_dir, target_latents=target)
        if is_secure_message(msg):  # SecAgg+: secaggplus_mod masks these arrays before they leave the site
            audit_outgoing(state_dir, site, global_round, update.arrays, update.num_examples)
            content = site_reply_content(update.arrays, update.num_examples, update.metrics,
                                         family.cfg.federation.secure_aggregation, site)
            content["site"] = ConfigRecord({"name": site})
            return Message(content=content, reply_to=msg)
        data, payload = site_send_weights(update.arrays, arrays, family.cfg.federation.compression, state_dir, global_round)
        audit_outgoing(state_dir, site, global_round, payload, update.num_examples)
        metrics = {**update.metrics, "num-examples": int(update.num_examples), "bytes_sent": len(data)}
        content = RecordDict({
            "arrays": to_record(payload),
            "metrics": MetricRecord({k: float(v) if k != "num-examples" else int(v) for k, v in metrics.items()}),
            "site": ConfigRecord({"name": site}),
        })
    else:
        metrics = family.evaluate_site(site, arrays)
        content = RecordDict({
            "metrics": MetricRecord({**{k: float(v) for k, v in metrics.items()}, "num-examples": 1}),
            "site": ConfigRecord({"name": site}),
        })
    return Message(content=content, reply_to=msg)


def _gradient_sync(msg: Message, cfg_record: ConfigRecord, family, site: str, state_dir: Path, arrays) -> Message:
    """One synchronisation of gradient averaging at this site (:mod:`training.federation.gradient_flower`):
    the site rebuilt from its private state, its compressed generator gradient at ``arrays`` as the reply;
    after the round's last synchronisation its mean losses too."""
    g, sync, syncs = int(cfg_record["global-round"]), int(cfg_record["sync"]), int(cfg_record["syncs"])
    if not 1 <= sync <= syncs:
        raise ValueError(f"site {site!r}: synchronisation {sync} of a round of {syncs} is out of range")
    fed = family.cfg.federation
    gsite = family.gradient_site(site, state_dir, g, sync - 1)
    data, payload, examples = site_sync(gsite, site, arrays, fed.sync_every, fed.compression, g, int(cfg_record["send"]))
    metrics: dict = {"num-examples": int(examples), "bytes_sent": float(len(data))}
    if sync == syncs:
        metrics.update({k: float(v) for k, v in gsite.finish(g).items()})
    else:
        gsite.suspend()
    return Message(content=RecordDict({"arrays": to_record(payload), "metrics": MetricRecord(metrics),
                                       "site": ConfigRecord({"name": site})}), reply_to=msg)


@client_app.train()
def site_train(msg: Message, context: Context) -> Message:
    """Local training at one hospital; replies with the shared weights only."""
    return _handle(msg, context, train=True)


@client_app.evaluate()
def site_evaluate(msg: Message, context: Context) -> Message:
    """Validation of the global model on the hospital's own validation split; replies with numbers only."""
    return _handle(msg, context, train=False)


@client_app.query()
def site_query(msg: Message, context: Context) -> Message:
    """``site``: reply with this node's site name. ``latent-features`` (target site only): the pooled latent
    features of the site's adaptation slices under the sent weights — no weights, no images.
    ``gradient-batches``: the site's number of training batches in the round (gradient averaging)."""
    cfg_record, family, site, state_dir = _open(msg, context)
    kind = str(cfg_record["query"])
    content = RecordDict({"site": ConfigRecord({"name": site})})
    if kind == "latent-features":
        if site != family.target_site:
            raise ValueError(f"site {site!r} is not the target site; it sends no latent features")
        latents = family.target_features(from_record(msg.content["arrays"]))
        audit_outgoing(state_dir, site, int(cfg_record["global-round"]), {"latents": latents}, 0)
        content[TARGET_LATENTS] = to_record({"latents": latents})
    elif kind == BATCHES_QUERY:  # gradient averaging: the number of synchronisations of this round
        gsite = family.gradient_site(site, state_dir, int(cfg_record["global-round"]))
        content["metrics"] = MetricRecord({"num-batches": int(gsite.num_batches)})
    elif kind != "site":
        raise ValueError(f"unknown query {kind!r}; expected 'site', 'latent-features' or {BATCHES_QUERY!r}")
    return Message(content=content, reply_to=msg)


server_app = ServerApp()


@server_app.main()
def coordinator(grid: Grid, context: Context) -> None:
    """Deployment entry point: the run configuration comes from the Flower run config
    (``config-file`` and optional ``overrides`` separated by ';')."""
    rc = context.run_config
    overrides = [o for o in str(rc.get("overrides", "")).split(";") if o.strip()]
    run_cfg = load_run_config(Path(str(rc["config-file"])), overrides)
    run_coordinator(grid, run_cfg)
