"""Configuration of the web pieces, from the environment (read on every call; cheap, no Airflow import).

=================================  ==========================================================================
``KAAPANA_FHIR_WEB_FHIR_URL``       FHIR base URL the API reads from (else ``FHIR_BASE_URL``, else the in-cluster
                                    default of :mod:`kaapana_fhir.kaapana.env`)
``KAAPANA_FHIR_PARTITIONING``       ``none`` (default: every project reads the base URL) or ``url`` (HAPI
                                    URL-based partitioning: ``<base>/<project>``)
``KAAPANA_FHIR_PROJECTS``           comma-separated project names offered in the explorer (default ``admin``)
``KAAPANA_FHIR_PUBLIC_FHIR_URL``    FHIR base for links shown to the browser (default: the server's base)
``KAAPANA_FHIR_PUBLIC_DICOMWEB_URL`` DICOMweb base for links (default ``DICOMWEB_URL``, else ``/dicom-web``)
``KAAPANA_FHIR_OHIF_URL``           Kaapana's OHIF viewer route (default ``/ohif/viewer``, as Kaapana 0.6 opens it:
                                    ``/ohif/viewer?StudyInstanceUIDs=<study>&initialSeriesInstanceUID=<series>``)
``KAAPANA_FHIR_COHORTS_DIR``        folder of saved cohort definitions (``*.json``)
``KAAPANA_FHIR_WEB_STATE_TTL``      seconds between checks of the FHIR server's state (default 5)
``KAAPANA_FHIR_DEFAULT_PATIENT_SEARCH`` ``Patient?...`` search of the built-in ``all`` cohort and the views
                                    (default: every Patient)
``KAAPANA_FHIR_WEB_MAX_BODY_BYTES`` largest request body the web adapters read (default
                                    :data:`kaapana_fhir.core.limits.MAX_DOCUMENT_BYTES`, 16 MiB; 413 above)
=================================  ==========================================================================
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

ADMIN_PROJECT = "admin"  # Kaapana runs triggered without a project_form in the admin project
_PROJECT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_DEFAULT_FHIR = "http://hapi-fhir-service.{ns}.svc:8080/fhir"


class SettingsError(ValueError):
    """A setting or a project name breaks its rule."""


@dataclass(frozen=True)
class WebSettings:
    fhir_url: str
    partitioning: str = "none"
    projects: tuple[str, ...] = (ADMIN_PROJECT,)
    public_fhir_url: str | None = None
    public_dicomweb_url: str = "/dicom-web"
    ohif_url: str = "/ohif/viewer"
    cohorts_dir: Path | None = None
    state_ttl: float = 5.0
    default_patient_search: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def check_project(self, project: str | None) -> str:
        """A configured project (``KAAPANA_FHIR_PROJECTS``); others are refused."""
        name = (project or self.projects[0]).strip()
        if name not in self.projects:
            raise SettingsError(f"project {name!r} is not configured "
                                f"(KAAPANA_FHIR_PROJECTS: {', '.join(self.projects)})")
        return name

    def fhir_base(self, project: str | None = None) -> str:
        """FHIR base URL the server reads for ``project``."""
        return project_base_url(self.fhir_url, self.check_project(project), self.partitioning)

    def public_fhir_base(self, project: str | None = None) -> str:
        return project_base_url(self.public_fhir_url or self.fhir_url, self.check_project(project),
                                self.partitioning)


def project_base_url(base: str, project: str, partitioning: str = "none") -> str:
    """``base`` (``none``) or ``base/<partition>`` (``url``: HAPI URL-based partitioning, the partition name of
    :func:`kaapana_fhir.clients.fhir.partition_name`, as every flow writes it)."""
    base = base.rstrip("/")
    if partitioning == "none":
        return base
    if partitioning == "url":
        from kaapana_fhir.clients.fhir import partition_name

        if not _PROJECT_RE.match(project):
            raise SettingsError(f"project {project!r}: not a valid project name (rule: project name)")
        return f"{base}/{quote(partition_name(project), safe='')}"
    raise SettingsError(f"KAAPANA_FHIR_PARTITIONING={partitioning!r}: use 'none' or 'url'")


def _partitioning(env: Mapping[str, str]) -> str:
    """``KAAPANA_FHIR_PARTITIONING``, else the Kaapana site setting (the hooks' rule), else ``none``."""
    mode = env.get("KAAPANA_FHIR_PARTITIONING")
    if not mode and env is os.environ:
        from kaapana_fhir.hooks.fhir import partitioning_mode

        return partitioning_mode()
    return (mode or "none").strip().lower() or "none"


def load(environ: Mapping[str, str] | None = None) -> WebSettings:
    env = os.environ if environ is None else environ
    fhir = (env.get("KAAPANA_FHIR_WEB_FHIR_URL") or env.get("FHIR_BASE_URL")
            or _DEFAULT_FHIR.format(ns=env.get("SERVICES_NAMESPACE", "services")))
    projects = tuple(p.strip() for p in env.get("KAAPANA_FHIR_PROJECTS", ADMIN_PROJECT).split(",") if p.strip())
    for p in projects:
        if not _PROJECT_RE.match(p):
            raise SettingsError(f"KAAPANA_FHIR_PROJECTS: {p!r} is not a valid project name")
    try:
        ttl = float(env.get("KAAPANA_FHIR_WEB_STATE_TTL", "5"))
    except ValueError:
        raise SettingsError("KAAPANA_FHIR_WEB_STATE_TTL must be a number of seconds") from None
    cohorts = env.get("KAAPANA_FHIR_COHORTS_DIR")
    return WebSettings(
        fhir_url=fhir.rstrip("/"),
        partitioning=_partitioning(env),
        projects=projects or (ADMIN_PROJECT,),
        public_fhir_url=(env.get("KAAPANA_FHIR_PUBLIC_FHIR_URL") or None),
        public_dicomweb_url=(env.get("KAAPANA_FHIR_PUBLIC_DICOMWEB_URL") or env.get("DICOMWEB_URL") or "/dicom-web"
                             ).rstrip("/"),
        ohif_url=env.get("KAAPANA_FHIR_OHIF_URL", "/ohif/viewer"),
        cohorts_dir=Path(cohorts) if cohorts else None,
        state_ttl=ttl,
        default_patient_search=env.get("KAAPANA_FHIR_DEFAULT_PATIENT_SEARCH", ""),
    )


def max_body_bytes(environ: Mapping[str, str] | None = None) -> int:
    """``KAAPANA_FHIR_WEB_MAX_BODY_BYTES`` (1 byte .. 1 GiB), default ``core.limits.MAX_DOCUMENT_BYTES``."""
    from kaapana_fhir.core.limits import MAX_DOCUMENT_BYTES

    raw = (os.environ if environ is None else environ).get("KAAPANA_FHIR_WEB_MAX_BODY_BYTES", "").strip()
    if not raw:
        return MAX_DOCUMENT_BYTES
    if not raw.isdigit() or not 0 < int(raw) <= 1 << 30:
        raise SettingsError(f"KAAPANA_FHIR_WEB_MAX_BODY_BYTES={raw[:20]!r}: a number of bytes in 1..{1 << 30}")
    return int(raw)


def run_project(dag_run: Any = None, conf: Mapping[str, Any] | None = None) -> str:
    """The project of a run (as :func:`kaapana_fhir.hooks.fhir.run_project`): ``conf.project`` (plain Airflow
    option), else ``conf.project_form.name`` (Kaapana UI runs); the admin project otherwise
    (triggered runs carry no ``project_form``, and Kaapana falls back to the admin project)."""
    c = conf if conf is not None else (getattr(dag_run, "conf", None) or {})
    form = c.get("project_form") or {} if isinstance(c, Mapping) else {}
    name = form.get("name") if isinstance(form, Mapping) else None
    return str(c.get("project") or name or ADMIN_PROJECT) if isinstance(c, Mapping) else ADMIN_PROJECT


def fhir_base_url_macro(dag_run: Any = None, project: str | None = None) -> str:
    """Airflow macro: FHIR base URL of the run's project (``{{ macros.kaapana_fhir.fhir_base_url(dag_run) }}``);
    any valid project name (a run may belong to a project the explorer does not list)."""
    s = load()
    return project_base_url(s.fhir_url, project or run_project(dag_run), s.partitioning)
