"""Backend load-report profiles: one registry of what each server's /metrics names mean.

Adding a server is one file with its :class:`LoadProfile` and one entry in ``PROFILES``; the
config's ``balancer.queue_depth.profiles`` lists the names to read (all by default: a scrape
only ever finds the names its server exports).
"""

from gateway.load_reports.profile import LoadProfile, LoadReport, read_report
from gateway.load_reports.sglang import SGLANG
from gateway.load_reports.tailgate import TAILGATE
from gateway.load_reports.tgi import TGI
from gateway.load_reports.triton import TRITON
from gateway.load_reports.vllm import VLLM

PROFILES: dict[str, LoadProfile] = {p.name: p for p in (VLLM, SGLANG, TGI, TRITON, TAILGATE)}

__all__ = ["PROFILES", "LoadProfile", "LoadReport", "read_report"]
