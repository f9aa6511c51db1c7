"""Where what is known about a user comes from: the port, and the sources that implement it."""

from factorflow.enrichment.port import EnrichmentSource, NoEnrichment

__all__ = ["EnrichmentSource", "NoEnrichment"]
