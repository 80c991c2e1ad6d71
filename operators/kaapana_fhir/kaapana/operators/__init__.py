"""The kaapana-fhir container operators; import them only through :mod:`kaapana_fhir.kaapana.runtime`."""
