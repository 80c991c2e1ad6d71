"""Kaapana ``*trigger_rule.json`` semantics, for plain-Airflow sites, the demo and tests.

Kaapana's ``LocalAutoTriggerOperator`` reads every ``*trigger_rule.json`` of the workflows folder; a rule is
``{"search_tags": {"0x0008,0x0060": "CT,MR"}, "dag_ids": {"<dag id>": {<settings>}}}``. All search tags must
match; comma-separated values mean OR; a rule without search tags matches every series. The conf of the
triggered run is the rule's settings dict plus ``data_form.identifiers`` = the series UIDs (PACS fetch) —
this module reproduces that so the same DAGs fire the same way outside Kaapana.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from kaapana_fhir.core.limits import load_json
from kaapana_fhir.exceptions import ConfigError, MappingError


def _tag_key(tag: str) -> str:
    """``"0x0008,0x0060"`` / ``"(0008,0060)"`` / ``"00080060"`` → ``"00080060"`` (DICOM JSON keyword form)."""
    t = tag.replace("0x", "").replace("(", "").replace(")", "").replace(",", "").replace(" ", "").upper()
    if len(t) != 8 or any(c not in "0123456789ABCDEF" for c in t):
        raise ConfigError(f"trigger rule search tag {tag!r} is not a DICOM tag (rule: 0xGGGG,0xEEEE)")
    return t


def load_rules(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = []
    for p in paths:
        try:
            data = load_json(p)
        except (OSError, ValueError, MappingError) as exc:
            raise ConfigError(f"{p}: cannot read trigger rule JSON ({exc})") from exc
        if not isinstance(data, list):
            raise ConfigError(f"{p}: a trigger rule file holds a JSON list of rules")
        for i, rule in enumerate(data):
            if not isinstance(rule, dict) or not isinstance(rule.get("dag_ids"), dict):
                raise ConfigError(f"{p}: rule {i} needs a 'dag_ids' object")
            rules.append(rule)
    return rules


def _values(dicom_json: Mapping[str, Any], key: str) -> list[str]:
    el = dicom_json.get(key) or {}
    return [str(v).strip().upper() for v in el.get("Value", []) if not isinstance(v, dict)]


def matching_dags(rules: Iterable[Mapping[str, Any]], series_json: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """DAG ids (with their settings) whose rules match one series' DICOM JSON attributes."""
    out: dict[str, dict[str, Any]] = {}
    for rule in rules:
        tags = rule.get("search_tags") or {}
        ok = True
        for tag, wanted in tags.items():
            options = {w.strip().upper() for w in str(wanted).split(",") if w.strip()}
            have = set(_values(series_json, _tag_key(tag)))
            if not options & have:
                ok = False
                break
        if ok:
            for dag_id, settings in rule["dag_ids"].items():
                out.setdefault(dag_id, dict(settings or {}))
    return out


def build_confs(rules: Iterable[Mapping[str, Any]], series: Iterable[Mapping[str, Any]]) -> dict[str, list[dict]]:
    """Confs per DAG for a batch of incoming series (DICOM JSON with (0020,000E)).

    ``single_execution: true`` → one conf per series; otherwise the batch shares one run, like Kaapana.
    """
    rules = list(rules)
    grouped: dict[str, tuple[dict[str, Any], list[str]]] = {}
    per_series: dict[str, list[dict[str, Any]]] = {}
    for s in series:
        uid_list = _values(s, "0020000E")
        if not uid_list:
            raise ConfigError("incoming series has no SeriesInstanceUID (0020,000E)")
        uid = (s.get("0020000E") or {}).get("Value", [""])[0]
        for dag_id, settings in matching_dags(rules, s).items():
            if settings.get("single_execution"):
                conf = dict(settings.items())
                conf["data_form"] = {"identifiers": [uid]}
                per_series.setdefault(dag_id, []).append(conf)
            else:
                grouped.setdefault(dag_id, (settings, []))[1].append(uid)
    out: dict[str, list[dict]] = dict(per_series.items())
    for dag_id, (settings, uids) in grouped.items():
        conf = dict(settings)
        conf["data_form"] = {"identifiers": uids}
        out.setdefault(dag_id, []).append(conf)
    return out
