"""Storage: everything the gateway keeps — sessions, history, turns, model calls, channel
settings, seen events, digest claims and the delivery ledger.

`gateway.storage` is the contract the service, costs and digest speak to; `sqlite` is the
embedded backend (one writer thread over sqlite-utils) and `migrations` its schema steps.
"""

from gateway.storage.sqlite import (
    DELIVERY_STATUSES,
    TURN_STATUSES,
    Delivery,
    Store,
    TurnRow,
    from_iso,
    to_iso,
)

__all__ = ["DELIVERY_STATUSES", "TURN_STATUSES", "Delivery", "Store", "TurnRow", "from_iso", "to_iso"]
