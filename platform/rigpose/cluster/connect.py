"""Connecting to Ray: an existing cluster ($RAY_ADDRESS or an address given) or a local Ray of our own."""

from __future__ import annotations

import os


def init_ray(address: str | None) -> None:
    """Connect to `address` or $RAY_ADDRESS (set inside `ray job submit`), else start a local Ray (with its
    dashboard, which also serves the state API that Ray Train's placement-group cleaner polls).

    The local Ray oversubscribes logical CPUs (max(4, cores)): on a 2-core machine, 2 workers plus Ray Data's
    tasks would otherwise wait forever for resources.
    """
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(address="local", num_cpus=max(4, os.cpu_count() or 1), include_dashboard=True,
                 log_to_driver=True, configure_logging=False)


