"""flows.cohort."""
