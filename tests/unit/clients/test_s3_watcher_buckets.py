"""The watcher over the buckets of several Kaapana projects (``bucket`` = comma list), on moto's S3 in-process."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kaapana_fhir.clients.s3 import ObjectStore
from kaapana_fhir.exceptions import ObjectStoreError
from kaapana_fhir.flows.tables.watch import find_new_objects
from kaapana_fhir.operators.csv_import import watch_buckets


@pytest.fixture(scope="module")
def store(moto_url: str) -> Iterator[ObjectStore]:
    s = ObjectStore(moto_url, "test", "test")
    for b in ("project-a", "project-b", "plain-bucket"):
        s.ensure_bucket(b)
        s.put_bytes(b, "fhir-import/t.csv", b"PatientID,age\np1,3\n")
        s.put_bytes(b, "fhir-import/t.preset", b"lung1\n")
    yield s


def test_each_project_bucket_is_watched_and_its_confs_carry_the_project(store: ObjectStore) -> None:
    confs = watch_buckets(store, "project-a, project-b,plain-bucket", "fhir-import/", find=find_new_objects)
    assert [(c["bucket"], c["object_key"]) for c in confs] == [
        ("project-a", "fhir-import/t.csv"), ("project-b", "fhir-import/t.csv"), ("plain-bucket", "fhir-import/t.csv")]
    assert confs[0]["project_form"] == {"name": "a", "s3_bucket": "project-a"}
    assert confs[1]["project_form"] == {"name": "b", "s3_bucket": "project-b"}
    assert "project_form" not in confs[2]


def test_a_missing_project_bucket_is_skipped_unless_it_is_the_only_one(store: ObjectStore,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    confs = watch_buckets(store, "project-gone,project-a", "fhir-import/", find=find_new_objects)
    assert [c["bucket"] for c in confs] == ["project-a"]
    assert "project-gone" in caplog.text and "does not exist" in caplog.text
    with pytest.raises(ObjectStoreError, match="bucket 'project-gone' does not exist"):
        watch_buckets(store, "project-gone", "fhir-import/", find=find_new_objects)
    with pytest.raises(ObjectStoreError, match="project-gone.*project-gone2"):
        watch_buckets(store, "project-gone,project-gone2", "fhir-import/", find=find_new_objects)
