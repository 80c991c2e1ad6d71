"""Flows: orchestration of clients + core for one job (no Airflow). Operators and the CLI call these."""
