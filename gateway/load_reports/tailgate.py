"""tailgate's bundled backend: its own names, beside the vLLM names it also exports."""

from gateway.load_reports.profile import LoadProfile

TAILGATE = LoadProfile(
    "tailgate",
    waiting=("tailgate_backend_queue_depth",),
    running=("tailgate_backend_running_requests",),
)
