"""Triton Inference Server's pending-request count (queued, not yet executing)."""

from gateway.load_reports.profile import LoadProfile

TRITON = LoadProfile("triton", waiting=("nv_inference_pending_request_count",))
