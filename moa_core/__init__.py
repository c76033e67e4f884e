"""The Mixture-of-Agents engine: providers, fan-out, aggregator tool loop, pricing, traces.

Knows nothing of chat platforms, storage or chat formatting; the gateway drives it.
"""
