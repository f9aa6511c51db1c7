"""Durable storage: the event ledger, the delivery ledger and the quarantine."""
