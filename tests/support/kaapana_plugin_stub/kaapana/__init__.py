"""Test stand-in for Kaapana's Airflow plugin package ``kaapana``."""
