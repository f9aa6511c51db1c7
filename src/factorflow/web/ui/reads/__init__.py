"""What the dashboard and ``factorflow report`` show, read from the store: plain queries and
values, no web framework. Lists are keyset-paginated over indexes (migration 0005); figures
are index-only scans over a time window."""
