"""Everything Kaapana-specific (see docs/kaapana.md for the Kaapana 0.6.0 rules each piece relies on).

* ``operators/``: the container operators (one per flow, a shared base; need Kaapana's Airflow plugin).
  Kaapana 0.6 starts their pods without command/args, so the task travels as ``KAAPANA_FHIR_TASK`` in
  ``env_vars`` (:mod:`.container_env`); file names contain "Operator" and each image line matches
  Kaapana's build-script ``IMAGE_PATTERN`` so the platform builds and pre-pulls the image.
* :mod:`.entry` / :mod:`.tasks` / :mod:`.env`: the processing container's entry point (``kaapana-fhir
  kaapana-run``, task from the pod env), its four tasks and Kaapana's container contract.
* :mod:`.runtime`: plain Airflow vs Kaapana operators at DAG-parse time; :mod:`.trigger_rules`.
"""
