"""Airflow imports that work on Airflow 2.11 (Kaapana 0.6) and Airflow 3.x.

``apache-airflow-providers-common-compat`` maps ``sdk`` names to the right home on either version;
``apache-airflow-providers-standard`` provides PythonOperator & co. on both.
"""

from __future__ import annotations

try:  # common-compat >= 1.7 maps these to airflow.sdk on Airflow 3 and to airflow.models on Airflow 2
    from airflow.providers.common.compat.sdk import DAG, BaseHook, BaseOperator, Param  # noqa: F401
except ImportError:  # an Airflow 2 image with an older common-compat provider (e.g. Kaapana's)
    from airflow.hooks.base import BaseHook  # type: ignore[no-redef] # noqa: F401
    from airflow.models import DAG, BaseOperator  # type: ignore[no-redef] # noqa: F401
    from airflow.models.param import Param  # type: ignore[no-redef] # noqa: F401

try:  # Airflow 3 / standard provider
    from airflow.providers.standard.operators.python import PythonOperator, ShortCircuitOperator  # noqa: F401
    from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator  # noqa: F401
except ImportError:  # pragma: no cover - Airflow 2 without the standard provider
    from airflow.operators.python import PythonOperator, ShortCircuitOperator  # type: ignore[no-redef,assignment] # noqa: F401
    from airflow.operators.trigger_dagrun import TriggerDagRunOperator  # type: ignore[no-redef,assignment] # noqa: F401

try:
    from airflow.sdk import task  # Airflow 3
except ImportError:  # Airflow 2
    from airflow.decorators import task  # type: ignore[no-redef] # noqa: F401

from airflow.exceptions import AirflowNotFoundException  # noqa: F401  (Airflow 3 re-exports the SDK class here)

try:
    from airflow.exceptions import AirflowSkipException  # noqa: F401
except ImportError:  # pragma: no cover
    from airflow.sdk.exceptions import AirflowSkipException  # type: ignore[no-redef] # noqa: F401
