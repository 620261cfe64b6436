"""Text Generation Inference's queue and batch gauges (it reports no KV share)."""

from gateway.load_reports.profile import LoadProfile

TGI = LoadProfile("tgi", waiting=("tgi_queue_size",), running=("tgi_batch_current_size",))
