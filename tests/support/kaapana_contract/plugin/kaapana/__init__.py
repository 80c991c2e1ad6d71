"""Stand-in for Kaapana 0.6.0's Airflow plugin package ``kaapana`` (see tests/support/kaapana_contract)."""
