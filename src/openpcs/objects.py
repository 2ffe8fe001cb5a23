"""Objects that scripts come from: `s3://bucket/key` and `https://...`, as PCS and HyperPod name them.

`s3://` is read from the S3-compatible object store openpcs is configured with (`serve --object-store-url`, with
credentials from AWS's usual chain: the environment, ~/.aws, AWS_PROFILE), through botocore's s3 client; without
one, from a directory per bucket under the data dir, `DATA/buckets/<bucket>/<key>`, so that scripts can be
dropped in without any object store. `https://` is fetched as it is. Sizes are bounded: these are scripts.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

MAX_OBJECT_BYTES = 16 * 1024 * 1024
MAX_PREFIX_OBJECTS = 1000
TIMEOUT_SECONDS = 30.0


class ObjectUnavailable(Exception):
    """An object could not be read; the message says which and why."""


def split_s3(uri: str) -> tuple[str, str]:
    """(bucket, key) of s3://bucket/key."""
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


class ObjectReader:
    def __init__(self, buckets_dir: Path, endpoint_url: str | None = None, region: str = "us-east-1") -> None:
        self.buckets_dir, self.endpoint_url, self.region = buckets_dir, endpoint_url, region
        self._s3 = None

    def copy_tree(self, uri: str, into: Path, needed: list[str]) -> None:
        """Copy what is under the "directory" `uri` into `into`, as HyperPod downloads a lifecycle script source:
        every object under an s3:// prefix; the `needed` names under an https:// one (which cannot be listed).
        ObjectUnavailable if a needed one is missing."""
        into.mkdir(parents=True, exist_ok=True)
        prefix = uri.rstrip("/") + "/"
        if uri.startswith("https://"):
            for name in needed:
                _write(into / name, self.read(prefix + name))
            return
        if not uri.startswith("s3://"):
            raise ObjectUnavailable(f"{uri} is neither an s3:// nor an https:// location")
        bucket, key_prefix = split_s3(prefix)
        keys = self._list(bucket, key_prefix.lstrip("/"))
        for key in keys:
            _write(into / key[len(key_prefix.lstrip("/")):], self.read(f"s3://{bucket}/{key}"))
        missing = [name for name in needed if not (into / name).is_file()]
        if missing:
            raise ObjectUnavailable(f"{prefix}{missing[0]} does not exist" + self._where(bucket))

    def read(self, uri: str) -> bytes:
        if uri.startswith("https://"):
            return _fetch(uri)
        if not uri.startswith("s3://"):
            raise ObjectUnavailable(f"{uri} is neither an s3:// nor an https:// location")
        bucket, key = split_s3(uri)
        if self.endpoint_url is None:
            path = self._local(bucket, key)
            try:
                if path.stat().st_size > MAX_OBJECT_BYTES:
                    raise ObjectUnavailable(f"{uri} is larger than {MAX_OBJECT_BYTES} bytes")
                return path.read_bytes()
            except OSError:
                raise ObjectUnavailable(f"{uri} does not exist" + self._where(bucket)) from None
        try:
            answer = self._client().get_object(Bucket=bucket, Key=key)
            if answer["ContentLength"] > MAX_OBJECT_BYTES:
                raise ObjectUnavailable(f"{uri} is larger than {MAX_OBJECT_BYTES} bytes")
            return answer["Body"].read()
        except ObjectUnavailable:
            raise
        except Exception as exc:  # botocore's ClientError, EndpointConnectionError, NoCredentialsError, ...
            raise ObjectUnavailable(f"{uri} could not be read from {self.endpoint_url}: {exc}") from None

    def _list(self, bucket: str, prefix: str) -> list[str]:
        if self.endpoint_url is None:
            root = self._local(bucket, "")
            base = self._local(bucket, prefix) if prefix else root
            if not base.is_dir():
                return []
            keys = sorted(str(p.relative_to(root)) for p in base.rglob("*") if p.is_file())
        else:
            try:
                pages = self._client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
                keys = [item["Key"] for page in pages for item in page.get("Contents", [])
                        if not item["Key"].endswith("/")]
            except Exception as exc:
                raise ObjectUnavailable(f"s3://{bucket}/{prefix} could not be listed at {self.endpoint_url}: "
                                        f"{exc}") from None
        if len(keys) > MAX_PREFIX_OBJECTS:
            raise ObjectUnavailable(f"s3://{bucket}/{prefix} holds more than {MAX_PREFIX_OBJECTS} objects")
        return keys

    def _local(self, bucket: str, key: str) -> Path:
        path = (self.buckets_dir / bucket / key).resolve()
        if not path.is_relative_to(self.buckets_dir.resolve() / bucket):
            raise ObjectUnavailable(f"s3://{bucket}/{key} is not a key openpcs reads (it leaves the bucket)")
        return path

    def _where(self, bucket: str) -> str:
        if self.endpoint_url is None:
            return f" (openpcs reads s3://{bucket}/ from {self.buckets_dir / bucket}/)"
        return f" (in the object store at {self.endpoint_url})"

    def _client(self):  # noqa: ANN202 - botocore's generated S3 client
        if self._s3 is None:
            import botocore.session  # only a server with an object store needs it loaded

            self._s3 = botocore.session.get_session().create_client("s3", endpoint_url=self.endpoint_url,
                                                                 region_name=self.region)
        return self._s3


def _write(path: Path, content: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)


def _fetch(uri: str) -> bytes:
    try:
        with urllib.request.urlopen(uri, timeout=TIMEOUT_SECONDS) as answer:  # noqa: S310 - https only
            content = answer.read(MAX_OBJECT_BYTES + 1)
    except (urllib.error.URLError, OSError) as exc:
        raise ObjectUnavailable(f"{uri} could not be fetched: {exc}") from None
    if len(content) > MAX_OBJECT_BYTES:
        raise ObjectUnavailable(f"{uri} is larger than {MAX_OBJECT_BYTES} bytes")
    return content
