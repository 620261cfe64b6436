"""Multi-worker mode: N gateway processes share the public port; a master supervises them.

One Python process proxies on one core. With ``tailgate serve --workers N`` each worker is a
whole :class:`~gateway.server.Gateway` (its own fleet, signals and health, so it balances on
what it observes itself) listening on its own ``SO_REUSEPORT`` socket: the kernel spreads new
connections across the workers, and a worker that stops accepting never blocks the others.

The master proxies nothing. It

- reserves the public port (bound, never listening) so port 0 resolves once and a port in use
  fails before any worker starts;
- starts each worker as a fresh interpreter (``python -m gateway.workers``) whose environment
  names a private, temporary ``PROMETHEUS_MULTIPROC_DIR``, so prometheus-client runs in
  multiprocess mode from its first import; a worker reports its pid and its private admin port
  (127.0.0.1, ephemeral, guarded by a per-run secret token) on a pipe once it is listening.
  The worker gets its config from the master (pickled on stdin): the last valid one, so a
  worker restarted while the file holds a broken edit serves what its siblings serve;
- serves the admin listener only after every worker listens: ``/metrics`` aggregated over all
  workers, live and dead (counters survive restarts), ``/readyz`` (ready while one worker is),
  ``/admin/backends`` (each worker's snapshot, fetched from its private listener), ``/healthz``;
- forwards SIGHUP (reload) to every worker; on SIGTERM/SIGINT forwards SIGTERM, waits for the
  workers to drain, removes the metrics directory and exits 0;
- replaces a worker that dies unexpectedly, after a short backoff. A crash loop
  (:class:`~gateway.workers.restarts.RestartPolicy`) stops the master with exit status 1
  instead: flapping forever would hide a broken host or release from the supervisor
  (systemd, Kubernetes) that should see it.

Modules: ``supervisor`` (the master: start, watch, restart, signal, stop), ``master_admin``
(the aggregated admin API), ``restarts`` (the crash-loop rule, pure) and ``worker`` (the worker
process itself, ``python -m gateway.workers``).
"""

from __future__ import annotations

from gateway.workers.restarts import RestartPolicy
from gateway.workers.supervisor import Master, serve_workers

__all__ = ["Master", "RestartPolicy", "serve_workers"]
