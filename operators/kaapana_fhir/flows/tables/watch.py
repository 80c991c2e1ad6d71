"""The bucket watcher: which table objects under a prefix are new or changed (by ETag) and need an import.

Kaapana has no bucket trigger, so a scheduled DAG calls :func:`find_new_objects`. Layout beside a data
object ``<name>.<csv|tsv|txt|xlsx|json>``:

* ``<name>.mapping.yaml`` (or ``.mapping.yml``): the mapping; or ``<name>.preset`` holding a preset name
  (``lung1``, ``redcap``); ``<name>.dictionary.csv``: the REDCap data dictionary;
* ``<name>.import-report.json``: written after each import;
* ``<dir>/.kaapana-fhir-state/<sha256(key)>.json``: one state object per data object (``signature`` =
  ETags of the object and its sidecars, ``status``, ``updated``). One object per key means concurrent
  imports never overwrite each other's state.

Decisions: a signature already ``imported``/``rejected`` is never triggered again (a file is
not imported twice for the same ETag); ``gone`` (deleted before the import read it) is triggered again
when the object is listed again (re-uploaded, even with the same bytes); ``failed`` is retried on the
next run; ``pending`` (triggered, not finished) is left alone until ``pending_timeout_s`` passes; an
object without a mapping, preset or default preset waits (not triggered, no state) until one is uploaded.

**State is recorded only after a trigger succeeded**: :func:`find_new_objects` writes nothing by default; the
watcher DAG's last task calls :func:`record_triggered` with the run ids of the triggers that succeeded and marks
those objects ``pending``. An object whose trigger failed (e.g. ``DagNotFound`` while the scheduler has not
registered the import DAG yet) has no new state and is triggered again by the next watcher run, and the watcher
run fails so the failure is visible.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import posixpath
from typing import Any

from kaapana_fhir.clients.protocols import ObjectStoreApi
from kaapana_fhir.clients.s3 import ObjectInfo
from kaapana_fhir.core.limits import loads_json
from kaapana_fhir.exceptions import MappingError, ObjectStoreError

log = logging.getLogger(__name__)

STATE_DIR = ".kaapana-fhir-state"
DATA_EXTENSIONS = (".csv", ".tsv", ".txt", ".xlsx", ".json", ".xml")
SIDECAR_SUFFIXES = (".mapping.yaml", ".mapping.yml", ".preset", ".dictionary.csv", ".import-report.json")
DONE = ("imported", "rejected")
#: a state object is a few hundred bytes; anything far larger is not ours
STATE_MAX_BYTES = 64 * 1024


def is_data_key(key: str) -> bool:
    low = key.lower()
    if f"/{STATE_DIR}/" in f"/{low}" or low.endswith("/") or posixpath.basename(low).startswith("."):
        return False
    return not low.endswith(SIDECAR_SUFFIXES) and low.endswith(DATA_EXTENSIONS)


def sidecars(key: str) -> dict[str, str]:
    """Sidecar keys of a data object (``<name>`` = key without its extension)."""
    stem = key.rsplit(".", 1)[0] if "." in posixpath.basename(key) else key
    return {"mapping": f"{stem}.mapping.yaml", "mapping_yml": f"{stem}.mapping.yml", "preset": f"{stem}.preset",
            "dictionary": f"{stem}.dictionary.csv", "report": f"{stem}.import-report.json"}


def state_key(key: str) -> str:
    d = posixpath.dirname(key)
    return posixpath.join(d, STATE_DIR, hashlib.sha256(key.encode("utf-8")).hexdigest()[:32] + ".json")


def read_text(store: ObjectStoreApi, bucket: str, key: str) -> str:
    return store.get_bytes(bucket, key).decode("utf-8-sig")


def preset_name(text: str) -> str:
    """The preset named in a ``<name>.preset`` object (its first word; empty if none)."""
    words = text.split()
    return words[0].lower() if words else ""


def _sig(etags: dict[str, str], key: str) -> str:
    side = sidecars(key)
    parts = [etags.get(key, "")] + [etags.get(side[k], "") for k in ("mapping", "mapping_yml", "preset", "dictionary")]
    return "|".join(parts)


def signature_of(store: ObjectStoreApi, bucket: str, key: str) -> str:
    """ETags of the object and its sidecars (``|``-joined; empty for a missing sidecar)."""
    etags = {}
    for k in [key, *sidecars(key).values()]:
        info = store.head(bucket, k)
        if info:
            etags[k] = info.etag
    return _sig(etags, key)


def write_state(store: ObjectStoreApi, bucket: str, key: str, signature: str, status: str, *,
                error: str | None = None, run_id: str | None = None) -> None:
    doc = {"key": key, "signature": signature, "status": status,
           "updated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    if run_id:
        doc["run_id"] = run_id
    if error:
        doc["error"] = error[:2000]
    store.put_bytes(bucket, state_key(key), json.dumps(doc).encode("utf-8"), "application/json")


def _states(store: ObjectStoreApi, bucket: str, infos: list[ObjectInfo]) -> dict[str, dict[str, Any]]:
    out = {}
    for info in infos:
        if f"/{STATE_DIR}/" not in f"/{info.key}" or not info.key.endswith(".json"):
            continue
        try:
            doc = loads_json(store.get_bytes(bucket, info.key), source=f"s3://{bucket}/{info.key}",
                             max_bytes=STATE_MAX_BYTES)
        except (ObjectStoreError, ValueError, MappingError) as exc:  # unreadable, not JSON, or over the limits
            log.warning("ignoring unreadable state object %s: %s", info.key, exc)
            continue
        if isinstance(doc, dict) and isinstance(doc.get("key"), str) and doc.get("key"):
            out[doc["key"]] = doc
        else:
            log.warning("ignoring state object %s: not a JSON object with a 'key' string", info.key)
    return out


def _pending_age(st: dict[str, Any], now: _dt.datetime) -> float | None:
    """Seconds since a pending state was written, or None when its ``updated`` is missing, not ISO 8601 or
    without a time zone (the state is then ignored and the object triggered again; imports are idempotent)."""
    try:
        updated = _dt.datetime.fromisoformat(str(st["updated"]))
    except (KeyError, TypeError, ValueError):
        return None
    if updated.tzinfo is None:
        return None
    return (now - updated).total_seconds()


def find_new_objects(store: ObjectStoreApi, bucket: str, prefix: str = "fhir-import/", *,
                     default_preset: str | None = None, skip_invalid_rows: bool = False,
                     pending_timeout_s: float = 3600.0, mark_pending: bool = False,
                     max_objects: int = 100) -> list[dict[str, Any]]:
    """Confs for the import DAG, one per new/changed/failed object (``mark_pending``: mark them at once, for
    callers without a separate :func:`record_triggered` step)."""
    infos = list(store.list(bucket, prefix))
    etags = {i.key: i.etag for i in infos}
    states = _states(store, bucket, infos)
    now = _dt.datetime.now(_dt.timezone.utc)
    confs: list[dict[str, Any]] = []
    for info in sorted(infos, key=lambda i: i.key):
        if not is_data_key(info.key):
            continue
        side = sidecars(info.key)
        sig = _sig(etags, info.key)
        st = states.get(info.key)
        if st and st.get("signature") == sig:
            if st.get("status") in DONE:
                continue
            if st.get("status") == "pending":
                age = _pending_age(st, now)
                if age is None:
                    log.warning("state of %s has no valid 'updated' time (%r); ignoring it and triggering the import "
                                "again", info.key, st.get("updated"))
                elif age < pending_timeout_s:
                    continue
                else:
                    log.warning("import of %s pending for %.0fs; triggering again", info.key, age)
        conf: dict[str, Any] = {"bucket": bucket, "object_key": info.key, "signature": sig,
                                "skip_invalid_rows": skip_invalid_rows}
        if side["mapping"] in etags or side["mapping_yml"] in etags:
            conf["mapping_key"] = side["mapping"] if side["mapping"] in etags else side["mapping_yml"]
        elif side["preset"] in etags:
            conf["preset"] = preset_name(read_text(store, bucket, side["preset"]))
        elif default_preset:
            conf["preset"] = default_preset
        else:
            log.info("%s has no %s, %s or default preset yet; waiting", info.key, side["mapping"], side["preset"])
            continue
        if len(confs) >= max_objects:
            log.info("more than %d objects to import; the rest follow on the next run", max_objects)
            break
        if mark_pending:
            write_state(store, bucket, info.key, sig, "pending")
        confs.append(conf)
    log.info("watcher: %d object(s) to import under s3://%s/%s", len(confs), bucket, prefix)
    return confs


def record_triggered(store: ObjectStoreApi, bucket: str, confs: list[dict[str, Any]],
                     run_ids: list[str | None]) -> list[str]:
    """Mark ``pending`` each object whose trigger succeeded (``run_ids[i]`` set); returns keys not triggered.

    ``confs`` are :func:`find_new_objects`' confs, ``run_ids`` the triggered import runs in the same order
    (``None`` for a failed trigger). Objects left out keep their old state and are triggered again next run.
    """
    missed = []
    for i, conf in enumerate(confs):
        rid = run_ids[i] if i < len(run_ids) else None
        if rid:
            write_state(store, bucket, conf["object_key"], conf.get("signature", ""), "pending",
                        error=None, run_id=str(rid))
        else:
            missed.append(conf["object_key"])
    if missed:
        log.warning("%d trigger(s) failed; retried on the next watcher run: %s", len(missed), ", ".join(missed[:20]))
    return missed
