"""Foundation bench: our FhirClient's chunked transaction writes vs raw requests POSTs of the same Bundles."""

from __future__ import annotations

import time
import uuid

import requests

from kaapana_fhir.clients.fhir import FhirClient
from kaapana_fhir.core import bundle
from kaapana_fhir.core.ids import patient_id


def _entries(tag: str, n: int) -> list[dict]:
    return [bundle.put_entry({"resourceType": "Patient", "id": patient_id(f"urn:bench:{tag}", str(i)),
                              "identifier": [{"system": f"urn:bench:{tag}", "value": str(i)}],
                              "gender": "female" if i % 2 else "male"}) for i in range(n)]


def run(ctx):  # noqa: ANN001, ANN201
    from run import Row

    url = ctx.stack().fhir_url
    n = 500 if ctx.quick else 2000
    client = FhirClient(url)
    # ours
    entries = _entries(uuid.uuid4().hex[:6], n)
    t = time.perf_counter()
    client.write_entries(entries, chunk_size=250)
    ours = time.perf_counter() - t
    # raw: same size Bundles (fresh ids so both do creates), plain requests
    entries2 = _entries(uuid.uuid4().hex[:6], n)
    s = requests.Session()
    t = time.perf_counter()
    for i in range(0, n, 250):
        r = s.post(url, json=bundle.transaction(entries2[i:i + 250], sort=False),
                   headers={"Content-Type": "application/fhir+json"}, timeout=300)
        r.raise_for_status()
    raw = time.perf_counter() - t
    return [
        Row("fhir_client", f"transaction write {n} Patients", n / ours, "resources/s", raw / ours,
            "raw requests POST (same Bundles)"),
    ]
