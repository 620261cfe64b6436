"""An LLM fleet to measure tailgate against: emulated vLLM-like pods, chat workloads, peers.

``pod`` is one emulated engine per process (``engine`` steps it, ``blocks`` holds its prefix
cache, ``costs`` says what a step costs); ``workloads`` plans the traffic, ``client`` sends it
and measures time to first token, ``runner`` runs each (scenario, peer) pair on fresh
processes and ``report`` writes the table. ``python -m loadtests.llm`` runs it all.
"""
