"""The enrichment port: who is this user (profile attributes, groups) at decision time."""

from __future__ import annotations

from typing import Protocol

from factorflow.domain.actions import Enrichment
from factorflow.domain.facts import Person


class EnrichmentSource(Protocol):
    def lookup(self, user: Person | None) -> Enrichment:
        """What the source knows about ``user``; ``found=False`` (never an exception) for a
        user it does not know or for ``None``."""
        ...


class NoEnrichment:
    """The source used when none is configured: nothing is known about anyone."""

    def lookup(self, user: Person | None) -> Enrichment:
        return Enrichment(source="none", found=False)
