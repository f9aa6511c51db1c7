"""Use-cases over narrow ports: normalise, screen, decide, act."""
