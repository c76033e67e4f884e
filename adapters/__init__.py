"""Platform adapters: normalise inbound events and render/send outbound values.

Adapters know nothing of MoA or storage; they exchange the plain values of
`adapters.contract` with the gateway.
"""
