"""kaapana.operators."""
