"""Shared base of the kaapana-fhir container operators (needs Kaapana's Airflow plugin).

A subclass sets only its task, default name, resources and its image line (Kaapana's build script and base
installer find images by scanning ``*Operator*.py`` files line by line for an ``image=``
assignment built from ``DEFAULT_REGISTRY`` and ``KAAPANA_BUILD_VERSION``, so that line stays in each
operator file). No ``cmds``/``arguments``: Kaapana 0.6 ignores them (``task_api``
starts the pod without command/args) and 0.5 would override the image's ENTRYPOINT with them; the task
travels as ``KAAPANA_FHIR_TASK`` in ``env_vars`` on both.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, ClassVar

from kaapana.operators.KaapanaBaseOperator import KaapanaBaseOperator

from kaapana_fhir.kaapana.container_env import container_env


class KaapanaFhirBaseOperator(KaapanaBaseOperator):
    """Starts the kaapana-fhir processing container for :attr:`TASK`.

    :param flow_params: the in-process operator's keyword arguments (or the flow's ``Params``); they
        reach the container as upper-case env vars (``workflow_form`` keys of the run override them).
    """

    TASK: ClassVar[str] = ""
    RAM_MB: ClassVar[tuple[int, int]] = (1000, 4000)
    TIMEOUT: ClassVar[timedelta] = timedelta(minutes=60)

    def __init__(self, dag: Any, name: str, *, image: str, env_vars: dict[str, str] | None = None,
                 flow_params: Any = None, **kwargs: Any) -> None:
        kwargs.setdefault("ram_mem_mb", self.RAM_MB[0])
        kwargs.setdefault("ram_mem_mb_lmt", self.RAM_MB[1])
        kwargs.setdefault("execution_timeout", self.TIMEOUT)
        super().__init__(
            dag=dag,
            name=name,
            image=image,
            image_pull_secrets=["registry-secret"],
            env_vars=container_env(self.TASK, flow_params or {}, env_vars),
            **kwargs,
        )
