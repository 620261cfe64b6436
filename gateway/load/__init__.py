"""Load: what one endpoint's signals say about it (pure, clock passed in)."""

from gateway.load.signals import EndpointSignals

__all__ = ["EndpointSignals"]
