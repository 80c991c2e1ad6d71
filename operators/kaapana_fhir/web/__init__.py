"""Web pieces of the Airflow plugin: the retrieval API and the cohort explorer.

* :mod:`.api` — framework-neutral request handling (no Flask, no FastAPI): cohort definitions,
  ViewDefinitions, cohort rows / series / statistics / Kaplan–Meier as JSON, CSV or Parquet;
* :mod:`.flask_app` (Airflow 2.11, FAB view) and :mod:`.fastapi_app` (Airflow 3.x, plugin ``fastapi_apps``)
  — thin adapters that authenticate with Airflow's login and hand the request to :func:`.api.handle`;
* :mod:`.survival`, :mod:`.settings`, :mod:`.links` (operator extra links), :mod:`.client` (the API's client).

Nothing here is imported by the plugin module at import time except :mod:`.settings` and :mod:`.links`
(both light); pandas and the cohort code load on the first request.
"""
