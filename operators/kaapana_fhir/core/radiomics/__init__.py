"""core.radiomics."""
