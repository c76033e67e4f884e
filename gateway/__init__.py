"""The gateway: sessions, commands, storage, costs, digest, delivery, app wiring and the CLI."""
