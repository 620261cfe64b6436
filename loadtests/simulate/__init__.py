"""A discrete-event fleet simulator that runs tailgate's own balancing and health code.

G gateway replicas and M backends on virtual time: every replica is a real
:class:`gateway.runtime.Runtime` (its own fleet, signals, policy, health and retry budget) driven
through an injected clock and RNG, and every try goes through the gateway's own
:class:`gateway.attempt.Attempt`. Backends are FIFO servers with a number of slots and a
service-time distribution, modelled on ``loadtests.fakepod``. See ``python -m loadtests.simulate
--help``.
"""
