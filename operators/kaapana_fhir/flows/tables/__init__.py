"""flows.tables."""
