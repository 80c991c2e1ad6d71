"""flows.radiomics."""
