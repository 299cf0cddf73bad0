"""Run every site of a configuration on this machine with Flower's simulation engine (Ray).

Offline and reproducible: telemetry, update checks and runtime dependency installation are switched
off; each site trains with one thread (``MRI_SITE_THREADS``) so sites run side by side on the cores.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

OFFLINE_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DEDUP_LOGS": "0",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
}
for _k, _v in OFFLINE_ENV.items():
    os.environ.setdefault(_k, _v)

from flwr.app import Context  # noqa: E402 - Flower and Ray read these variables when imported
from flwr.serverapp import Grid, ServerApp  # noqa: E402 - Flower and Ray read these variables when imported
from flwr.simulation import run_simulation  # noqa: E402 - Flower and Ray read these variables when imported

from training.federation.apps import client_app  # noqa: E402 - Flower and Ray read these variables when imported
from training.federation.coordinator import run_coordinator  # noqa: E402 - Flower and Ray read these variables when imported
from training.federation.registry import family_from_config  # noqa: E402 - Flower and Ray read these variables when imported

log = logging.getLogger(__name__)


def simulate(run_cfg: dict, progress: Callable[[int, dict], None] | None = None, num_cpus: int | None = None,
             verbose: bool = False) -> None:
    """Run (or resume) the federated run ``run_cfg`` with one simulated supernode per site (training sites,
    then FL-MRCM's target site if any)."""

    family = family_from_config(run_cfg)
    server_app = ServerApp()
    failure: list[BaseException] = []

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        try:
            run_coordinator(grid, run_cfg, progress)
        except BaseException as exc:  # surfaced after the simulation stops
            failure.append(exc)
            raise

    if not verbose:  # Flower logs every message at INFO/DEBUG; the CLI shows a progress bar instead
        logging.getLogger("flwr").setLevel(logging.WARNING)
    cpus = num_cpus or os.cpu_count() or 1
    try:
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=len(family.federation_sites),  # FL-MRCM: + the target site
            backend_config={
                "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                "init_args": {"num_cpus": cpus, "num_gpus": 0, "include_dashboard": False,
                              "logging_level": "error", "log_to_driver": True},
            },
        )
    except Exception:  # re-raised below: the coordinator's own error wins over Flower's wrapper
        if failure:  # the coordinator's own error (e.g. StopRun) rather than Flower's wrapper
            raise failure[0] from None
        raise
    if failure:
        raise failure[0]
