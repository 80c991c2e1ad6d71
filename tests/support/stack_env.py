"""A running stack named by the environment, shared by ``tests/conftest.py`` and ``tests/bench/run.py``.

``FHIR_BASE_URL``, ``DICOMWEB_URL`` (+ ``ORTHANC_URL``) and ``S3_ENDPOINT_URL`` (+ ``S3_ACCESS_KEY`` /
``S3_SECRET_KEY``) all set: the tests and benchmarks use those servers and start nothing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from kaapana_fhir.dev import stack as devstack

#: service → (its URL variable, {extra key: (variable, default)})
SERVICES: dict[str, tuple[str, dict[str, tuple[str, str]]]] = {
    "hapi": ("FHIR_BASE_URL", {}),
    "orthanc": ("DICOMWEB_URL", {"rest": ("ORTHANC_URL", "")}),
    "s3": ("S3_ENDPOINT_URL", {"access_key": ("S3_ACCESS_KEY", devstack.S3_ACCESS_KEY),
                               "secret_key": ("S3_SECRET_KEY", devstack.S3_SECRET_KEY)}),
}


def external_stack(state_dir: str | Path, env: Mapping[str, str] | None = None) -> devstack.Stack | None:
    """The stack the environment names (every URL variable set), else ``None`` (start one)."""
    env = os.environ if env is None else env
    if not all(env.get(url) for url, _ in SERVICES.values()):
        return None
    st = devstack.Stack(str(state_dir))
    for name, (url, extra) in SERVICES.items():
        st.services[name] = devstack.Service(name, 0, 0, env[url], "",
                                             {k: env.get(var, default) for k, (var, default) in extra.items()})
    return st
