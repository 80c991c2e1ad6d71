"""S3 / MinIO object store access on boto3 (no Airflow).

Endpoint and credentials come from configuration (Airflow Connection, Kaapana env, CLI); keys are
passed to the S3 API as parameters, never built into URLs by hand. :func:`safe_local_path` keeps
object keys from writing outside a work directory.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

from kaapana_fhir.clients.fhir import redact_url
from kaapana_fhir.exceptions import ConfigError, ObjectStoreError

log = logging.getLogger(__name__)


class _RedactCredentials(logging.Filter):
    """botocore's DEBUG request dumps carry ``Credential=<access key id>/...`` and security tokens."""

    _patterns = (re.compile(r"(Credential=)[^/,\s'\"]+"), re.compile(r"(X-Amz-Security-Token['\"]?:?\s*['\"]?)[^'\",\s]+", re.I),
                 re.compile(r"(X-Amz-Credential=)[^&\s'\"]+", re.I))

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        red = msg
        for pat in self._patterns:
            red = pat.sub(r"\1***", red)
        if red != msg:
            record.msg, record.args = red, None
        return True


for _name in ("botocore.endpoint", "botocore.auth", "botocore.httpsession", "botocore.parsers", "botocore.hooks",
              "botocore.retryhandler", "urllib3.connectionpool"):
    logging.getLogger(_name).addFilter(_RedactCredentials())


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    etag: str
    size: int
    last_modified: Any = None


class ObjectStore:
    """One S3 endpoint (MinIO in Kaapana; moto/any S3 locally)."""

    def __init__(self, endpoint_url: str | None, access_key: str | None, secret_key: str | None, *,
                 region: str = "us-east-1", verify: bool | str = True, client: Any = None) -> None:
        self.endpoint_url = endpoint_url
        self._client = client or boto3.client(
            "s3", endpoint_url=endpoint_url, aws_access_key_id=access_key, aws_secret_access_key=secret_key,
            region_name=region, verify=verify,
            config=Config(retries={"max_attempts": 4, "mode": "standard"}, connect_timeout=5, read_timeout=60,
                          s3={"addressing_style": "path"}))

    def _where(self) -> str:
        return redact_url(self.endpoint_url or "AWS S3")

    def _wrap(self, what: str, fn: Any, **kw: Any) -> Any:
        try:
            return fn(**kw)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "?")
            if code in ("NoSuchKey", "404", "NotFound"):
                raise ObjectStoreError(f"object {kw.get('Key')!r} not found in bucket {kw.get('Bucket')!r} "
                                       f"at {self._where()} ({what}); it may have been deleted") from None
            raise ObjectStoreError(f"S3 {what} at {self._where()} failed: {code}") from None
        except EndpointConnectionError:
            raise ObjectStoreError(f"S3 server at {self._where()} is unreachable during {what}") from None
        except BotoCoreError as exc:
            raise ObjectStoreError(f"S3 {what} at {self._where()} failed: {type(exc).__name__}") from None

    def ensure_bucket(self, bucket: str) -> None:
        try:
            self._client.head_bucket(Bucket=bucket)
        except ClientError:
            self._wrap("create_bucket", self._client.create_bucket, Bucket=bucket)
        except EndpointConnectionError:
            raise ObjectStoreError(f"S3 server at {self._where()} is unreachable") from None

    def put_bytes(self, bucket: str, key: str, data: bytes, content_type: str = "application/octet-stream") -> str:
        res = self._wrap("put_object", self._client.put_object, Bucket=bucket, Key=key, Body=data,
                         ContentType=content_type)
        return str(res.get("ETag", "")).strip('"')

    def put_file(self, bucket: str, key: str, path: str | os.PathLike[str]) -> str:
        with open(path, "rb") as fh:
            return self.put_bytes(bucket, key, fh.read())

    def get_bytes(self, bucket: str, key: str) -> bytes:
        res = self._wrap("get_object", self._client.get_object, Bucket=bucket, Key=key)
        return res["Body"].read()

    def head(self, bucket: str, key: str) -> ObjectInfo | None:
        try:
            res = self._client.head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise ObjectStoreError(f"S3 head_object at {self._where()} failed") from None
        except EndpointConnectionError:
            raise ObjectStoreError(f"S3 server at {self._where()} is unreachable") from None
        return ObjectInfo(key, str(res.get("ETag", "")).strip('"'), int(res.get("ContentLength", 0)),
                          res.get("LastModified"))

    def list(self, bucket: str, prefix: str = "") -> Iterator[ObjectInfo]:
        token = None
        while True:
            kw: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
            if token:
                kw["ContinuationToken"] = token
            res = self._wrap("list_objects_v2", self._client.list_objects_v2, **kw)
            for obj in res.get("Contents", []):
                yield ObjectInfo(obj["Key"], str(obj.get("ETag", "")).strip('"'), int(obj.get("Size", 0)),
                                 obj.get("LastModified"))
            if not res.get("IsTruncated"):
                return
            token = res.get("NextContinuationToken")

    def delete(self, bucket: str, key: str) -> None:
        self._wrap("delete_object", self._client.delete_object, Bucket=bucket, Key=key)


def safe_local_path(base_dir: str | os.PathLike[str], key: str) -> Path:
    """Map an object key to a path inside ``base_dir``; reject ``..``, absolute paths and NUL."""
    if not key or "\x00" in key:
        raise ConfigError(f"object key {key!r} is empty or contains NUL (rule: keys map into the work dir)")
    pure = PurePosixPath(key.replace("\\", "/"))
    if pure.is_absolute() or any(p == ".." for p in pure.parts):
        raise ConfigError(f"object key {key!r} would leave the work directory (rule: no '..' or absolute paths)")
    base = Path(base_dir).resolve()
    target = (base / Path(*pure.parts)).resolve()
    if base != target and base not in target.parents:
        raise ConfigError(f"object key {key!r} would leave the work directory {base}")
    return target
