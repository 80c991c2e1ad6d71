"""SQL-on-FHIR v2 ViewDefinition runner (pure: no network, no Airflow).

>>> from kaapana_fhir.core.sof import compile_view
>>> view = compile_view({"resource": "Patient", "select": [{"column": [{"name": "id", "path": "id"}]}]})
>>> view.rows({"resourceType": "Patient", "id": "p1"})
[{'id': 'p1'}]

* :func:`compile_view` validates a ViewDefinition (:func:`validate_view`) and compiles its paths into
  Python closures (fhirpathpy for paths outside the compiled subset);
* :class:`CompiledView` yields rows per resource (dicts or tuples);
* :mod:`.io` reads resources from NDJSON / Bundle / JSON files as a stream and writes rows as CSV,
  Parquet or JSON.

Conformance: the official SQL-on-FHIR v2 test suite (``tests/data/sql-on-fhir-v2``) runs in
``tests/unit/core/sof/test_conformance.py``.
"""

from kaapana_fhir.core.sof.errors import ViewDefinitionError
from kaapana_fhir.core.sof.fhirpath import reference_key, resource_key
from kaapana_fhir.core.sof.runner import CompiledView, Engine, compile_view, run_view
from kaapana_fhir.core.sof.structure import validate_view, view_problems

__all__ = ["CompiledView", "Engine", "ViewDefinitionError", "compile_view", "reference_key", "resource_key",
           "run_view", "validate_view", "view_problems"]
