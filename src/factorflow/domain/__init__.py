"""Pure values: no I/O, no framework."""
