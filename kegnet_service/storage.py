"""The model store: one interface, a local-folder backend and an S3 backend.

Keys look like ``jobs/<id>/student.pt``.  Writes are atomic in both backends:
the local one writes a temporary file and renames it, and an S3 PUT (or a
completed multipart upload) becomes visible all at once.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import unquote, urlparse

if TYPE_CHECKING:
    from kegnet_service.settings import Settings

CHUNK = 1024 * 1024


class StoreError(Exception):
    """The store could not be reached or refused the operation."""


class ObjectMissing(StoreError):
    """No object has that key."""


class StoreRefused(StoreError):
    """The store answered and refused (denied access, no such bucket, a bad request): trying
    again will not help, unlike an outage."""


# S3 errors with a 4xx status that still mean "try again later".
TRANSIENT_S3_CODES = frozenset(
    {
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "TooManyRequests",
        "RequestLimitExceeded",
    }
)


def check_key(key: str) -> str:
    """Refuse keys that could escape the store's root."""
    path = PurePosixPath(key)
    if not key or path.is_absolute() or ".." in path.parts or "\\" in key:
        raise ValueError(f"invalid store key {key!r}")
    return key


class ModelStore(Protocol):
    def put_file(self, key: str, path: Path) -> None: ...

    def get_file(self, key: str, path: Path) -> None: ...

    def iter_bytes(self, key: str) -> Iterator[bytes]: ...

    def size(self, key: str) -> int: ...

    def exists(self, key: str) -> bool: ...

    def delete_prefix(self, prefix: str) -> None: ...

    def ping(self) -> None: ...

    def presigned_url(self, key: str, filename: str, expires_s: int = 3600) -> str | None: ...

    def list_keys(self, prefix: str) -> list[str]: ...


class LocalStore:
    """Objects as files under one folder."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put_file(self, key: str, path: Path) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        try:
            with os.fdopen(handle, "wb") as out, open(path, "rb") as source:
                shutil.copyfileobj(source, out, CHUNK)
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def get_file(self, key: str, path: Path) -> None:
        source = self._path(key)
        if not source.is_file():
            raise ObjectMissing(key)
        shutil.copyfile(source, path)

    def iter_bytes(self, key: str) -> Iterator[bytes]:
        source = self._path(key)
        if not source.is_file():
            raise ObjectMissing(key)
        return self._chunks(source)

    @staticmethod
    def _chunks(source: Path) -> Iterator[bytes]:
        with open(source, "rb") as handle:
            while chunk := handle.read(CHUNK):
                yield chunk

    def size(self, key: str) -> int:
        source = self._path(key)
        if not source.is_file():
            raise ObjectMissing(key)
        return source.stat().st_size

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete_prefix(self, prefix: str) -> None:
        folder = self._path(prefix.rstrip("/"))
        if folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)
        elif folder.is_file():
            folder.unlink(missing_ok=True)

    def list_keys(self, prefix: str) -> list[str]:
        folder = self._path(prefix.rstrip("/"))
        if not folder.is_dir():
            return []
        return sorted(
            path.relative_to(self.root).as_posix()
            for path in folder.rglob("*")
            if path.is_file() and not path.name.startswith(".")
        )

    def ping(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if not os.access(self.root, os.W_OK):
            raise StoreError(f"store folder {self.root} is not writable")

    def presigned_url(self, key: str, filename: str, expires_s: int = 3600) -> str | None:
        return None  # files are streamed through the API


class S3Store:
    """Objects in an S3 bucket under a prefix (AWS, MinIO, SeaweedFS, ...)."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        public_endpoint_url: str | None = None,
        region: str | None = None,
    ) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        config = Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=60)
        self.client = boto3.client("s3", endpoint_url=endpoint_url, region_name=region, config=config)
        self.public_client = (
            boto3.client("s3", endpoint_url=public_endpoint_url, region_name=region, config=config)
            if public_endpoint_url
            else None
        )

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _call(self, method: str, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self.client, method)(**kwargs)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("404", "NoSuchKey", "NotFound"):
                raise ObjectMissing(kwargs.get("Key", "")) from exc
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            if 400 <= status < 500 and status not in (408, 429) and code not in TRANSIENT_S3_CODES:
                raise StoreRefused(f"S3 {method} was refused: {exc}") from exc
            raise StoreError(f"S3 {method} failed: {exc}") from exc
        except BotoCoreError as exc:
            raise StoreError(f"S3 {method} failed: {exc}") from exc

    def put_file(self, key: str, path: Path) -> None:
        self._call("upload_file", Filename=str(path), Bucket=self.bucket, Key=self._key(key))

    def get_file(self, key: str, path: Path) -> None:
        self._call("download_file", Bucket=self.bucket, Key=self._key(key), Filename=str(path))

    def iter_bytes(self, key: str) -> Iterator[bytes]:
        body = self._call("get_object", Bucket=self.bucket, Key=self._key(key))["Body"]
        chunks: Iterator[bytes] = body.iter_chunks(CHUNK)
        return chunks

    def size(self, key: str) -> int:
        return int(self._call("head_object", Bucket=self.bucket, Key=self._key(key))["ContentLength"])

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
        except ObjectMissing:
            return False
        return True

    def list_keys(self, prefix: str) -> list[str]:
        keys: list[str] = []
        token: dict[str, str] = {}
        full = self._key(prefix.rstrip("/")) + "/"
        while True:
            page = self._call("list_objects_v2", Bucket=self.bucket, Prefix=full, **token)
            for item in page.get("Contents", []):
                name = item["Key"]
                keys.append(name[len(self.prefix) + 1 :] if self.prefix else name)
            if not page.get("IsTruncated"):
                return sorted(keys)
            token = {"ContinuationToken": page["NextContinuationToken"]}

    def delete_prefix(self, prefix: str) -> None:
        keys = self.list_keys(prefix)
        for start in range(0, len(keys), 1000):
            batch = [{"Key": self._key(key)} for key in keys[start : start + 1000]]
            self._call("delete_objects", Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})

    def ping(self) -> None:
        self._call("head_bucket", Bucket=self.bucket)

    def ensure_bucket(self) -> None:
        """Create the bucket when it does not exist (for local S3 servers)."""
        try:
            self.ping()
        except StoreError:
            self._call("create_bucket", Bucket=self.bucket)

    def presigned_url(self, key: str, filename: str, expires_s: int = 3600) -> str | None:
        client = self.public_client or self.client
        return str(
            client.generate_presigned_url(
                "get_object",
                Params={
                    "Bucket": self.bucket,
                    "Key": self._key(key),
                    "ResponseContentDisposition": f'attachment; filename="{filename}"',
                },
                ExpiresIn=expires_s,
            )
        )


def open_store(
    url: str,
    *,
    endpoint_url: str | None = None,
    public_endpoint_url: str | None = None,
    region: str | None = None,
) -> LocalStore | S3Store:
    """A store for ``file:///path`` or ``s3://bucket/prefix``."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return LocalStore(Path(unquote(parsed.path)))
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ValueError(f"storage URL {url!r} names no bucket")
        return S3Store(parsed.netloc, parsed.path, endpoint_url, public_endpoint_url, region)
    raise ValueError(f"storage URL must start with file:// or s3://, got {url!r}")


def settings_store(settings: Settings) -> LocalStore | S3Store:
    """The store ``settings`` name (URL, endpoints, region): the API's, a worker's, the reaper's."""
    return open_store(
        settings.resolved_storage_url,
        endpoint_url=settings.s3_endpoint_url,
        public_endpoint_url=settings.s3_public_endpoint_url,
        region=settings.s3_region,
    )
