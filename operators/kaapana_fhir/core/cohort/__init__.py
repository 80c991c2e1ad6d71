"""core.cohort."""
