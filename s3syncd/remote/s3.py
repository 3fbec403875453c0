"""The S3 platform: an S3 bucket prefix (AWS or any S3-compatible endpoint) as the remote.

The only module of the package that imports boto3/botocore. Every foreign exception is
translated into the ``s3syncd.errors`` tree by :func:`_translate`, and no message carries
credentials.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import enum
import hashlib
import logging
import os
import re
import sys
import threading
import uuid
from collections import deque
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit, urlunsplit
from xml.etree import ElementTree

import boto3
import botocore.session
from boto3.exceptions import Boto3Error
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    CredentialRetrievalError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
    ProfileNotFound,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)
from botocore.utils import parse_timestamp
from s3transfer.utils import ChunksizeAdjuster

try:
    # The AWS Common Runtime (boto3[crt]): optional, plain boto3 carries everything without it.
    import awscrt.auth
    import awscrt.exceptions
    import awscrt.http
    import awscrt.io
    import awscrt.s3
except ImportError:  # pragma: no cover - exercised only where awscrt is not installed
    HAVE_CRT = False
else:
    HAVE_CRT = True

from s3syncd.errors import (
    AuthError,
    BucketNotFoundError,
    ConfigError,
    EndpointError,
    PreconditionFailedError,
    RemoteError,
    RemoteNotFoundError,
    SyncError,
    TransferError,
    UnsafePathError,
)
from s3syncd.model import RemoteObject
from s3syncd.remote.base import (
    NOT_MODIFIED,
    STATE_PREFIX,
    Blob,
    NotModified,
    ObjectVersion,
    ProgressCallback,
    Remote,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import (
        CompletedPartTypeDef,
        CopySourceTypeDef,
        PutObjectRequestTypeDef,
    )

log = logging.getLogger(__name__)

MiB = 1024 * 1024
GiB = 1024 * MiB
DEFAULT_MULTIPART_THRESHOLD = 16 * MiB
DEFAULT_MAX_CONCURRENCY = 4
# Largest object a single CopyObject request may copy; above it a multipart copy is needed.
MAX_SINGLE_COPY = 5 * GiB
MD5_METADATA = "md5"
STREAM_CHUNK = 1 << 20
# Part size of the CRT's ranged downloads: bounds its buffers, one on_body call per part.
GET_PART = 8 * MiB

_HEX_MD5 = re.compile(r"[0-9a-f]{32}")
_AUTH_CODES = frozenset(
    {
        "403",
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
        "InvalidSecurity",
    }
)
_NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound"})
_PRECONDITION_CODES = frozenset({"412", "PreconditionFailed", "ConditionalRequestConflict"})
# Answers from a server that does not implement a conditional header on CopyObject.
_UNSUPPORTED_CODES = frozenset({"NotImplemented", "InvalidArgument", "InvalidRequest", "501"})


def _strip_etag(etag: str) -> str:
    return etag.strip('"')


def _plain_md5(etag: str) -> str | None:
    """The ETag if it is an MD5 of the content (single-part upload), else None.

    Multipart ETags look like ``<hex>-<parts>``. SSE-KMS ETags are 32 hex digits but not
    MD5s; S3 gives no way to tell, so uploads also store the MD5 as metadata and
    :class:`S3Remote` takes a 32-hex ETag for the MD5 only once it saw that it is one.
    """
    etag = _strip_etag(etag).lower()
    return etag if _HEX_MD5.fullmatch(etag) else None


def _timestamp(value: str) -> dt.datetime:
    """A response timestamp. botocore parses each with dateutil (~70 us): most of the CPU of
    a 100,000-object LIST, one time per object. ``fromisoformat`` reads the ISO 8601 form
    of listings far faster; any other form (HTTP dates in headers) goes the botocore way."""
    try:
        parsed = dt.datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return parse_timestamp(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)


def _quoted(etag: str) -> str:
    # HTTP entity tags are quoted; servers differ in whether they accept bare ones.
    return etag if etag.startswith('"') else f'"{etag}"'


def _redact_url(url: str) -> str:
    """``url`` without any user:password part, for messages."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))


def _is_custom_endpoint(url: str) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    return not (host.endswith(".amazonaws.com") or host.endswith(".amazonaws.com.cn"))


def normalize_prefix(prefix: str) -> str:
    """Strip surrounding '/'; refuse '.', '..' and empty segments. '' means the bucket root."""
    prefix = prefix.strip("/")
    if prefix and any(part in ("", ".", "..") for part in prefix.split("/")):
        raise ConfigError(f"S3 prefix {prefix!r} must not contain '.', '..' or '//'")
    return prefix


def _check_key(key: str) -> str:
    if not key or key.startswith("/") or any(ord(c) < 32 for c in key):
        raise UnsafePathError(f"unsafe remote key {key!r}")
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise UnsafePathError(f"unsafe remote key {key!r}: empty, '.' or '..' segment")
    return key


def _error_parts(exc: ClientError) -> tuple[str, int]:
    code = str(exc.response.get("Error", {}).get("Code", ""))
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
    return code, status


def _translate(exc: BaseException, what: str, bucket: str, endpoint: str) -> SyncError:
    """Map a boto3/botocore exception to the s3syncd error tree (one sentence, no secrets)."""
    if isinstance(exc, Boto3Error):
        # upload_file/download_file wrap the real cause; translate that instead.
        inner = getattr(exc, "last_exception", None) or exc.__cause__ or exc.__context__
        if isinstance(inner, ClientError | BotoCoreError):
            return _translate(inner, what, bucket, endpoint)
        return TransferError(f"{what} failed: {exc}")
    if isinstance(exc, ClientError):
        code, status = _error_parts(exc)
        if code == "NoSuchBucket":
            return BucketNotFoundError(f"bucket '{bucket}' does not exist")
        if code in _NOT_FOUND_CODES or status == 404:
            return RemoteNotFoundError(f"{what}: no such object")
        if code in _PRECONDITION_CODES or status == 412:
            return PreconditionFailedError(f"{what}: the object changed or already exists")
        if code == "RequestTimeTooSkewed":
            return AuthError(f"{what}: this machine's clock differs too much from the server's")
        if code in _AUTH_CODES or status == 403:
            return AuthError(
                f"{what}: access denied (code {code}); check the credentials and the bucket policy"
            )
        message = str(exc.response.get("Error", {}).get("Message", "")).strip()
        detail = f": {message}" if message else ""
        return RemoteError(f"{what} failed with {code or 'an error'} (HTTP {status}){detail}")
    if isinstance(exc, NoCredentialsError | PartialCredentialsError | CredentialRetrievalError):
        return AuthError(
            "no AWS credentials found (set a profile, the AWS_ACCESS_KEY_ID/"
            "AWS_SECRET_ACCESS_KEY environment variables, or credentials in the config)"
        )
    if isinstance(exc, BotoConnectionError | HTTPClientError):
        return EndpointError(f"cannot reach the S3 endpoint {endpoint} ({type(exc).__name__})")
    if isinstance(exc, BotoCoreError):
        return RemoteError(f"{what} failed: {exc}")
    return RemoteError(f"{what} failed: {type(exc).__name__}")


class TransferEngine(enum.Enum):
    """What carries data transfers (control requests always go through boto3)."""

    AUTO = "auto"  # the CRT where awscrt is installed and can sign for the client, else boto3
    CRT = "crt"  # the CRT, or a ConfigError
    BOTO3 = "boto3"


# CRT error names that mean the endpoint could not be reached (no HTTP reply at all).
_CRT_CONNECTION_ERRORS = ("AWS_IO_SOCKET", "AWS_IO_DNS", "AWS_ERROR_HTTP_CONNECTION", "AWS_IO_TLS")


@dataclass(frozen=True, slots=True)
class _CrtReply:
    status: int
    headers: Mapping[str, str]  # names lower-cased


class _CrtTransport:
    """Single PutObject and GetObject requests on the AWS Common Runtime's S3 client.

    Its native event-loop threads sign, send and receive on kept-alive connections, so
    thousands of small transfers no longer queue for the GIL in botocore's per-request
    Python. The requests are built here, with exactly the headers the boto3 path sends
    (Content-MD5, the md5 metadata, If-Match/If-None-Match). s3transfer's CRT manager
    is not used: it strips Content-MD5, refuses IfMatch/IfNoneMatch and hides the reply's
    ETag. PutObject goes as a DEFAULT request, which the CRT never splits into parts.
    """

    def __init__(
        self,
        endpoint_url: str,
        region: str,
        credentials: Any,
        bucket: str,
        path_style: bool,
        max_attempts: int,
        connect_timeout: float,
    ) -> None:
        parts = urlsplit(endpoint_url)
        tls = parts.scheme == "https"
        if path_style:
            self._host = parts.netloc
            self._base = f"/{quote(bucket, safe='')}"
        else:
            self._host = f"{bucket}.{parts.netloc}"
            self._base = ""
        if hasattr(credentials, "refresh_needed"):
            # Refreshable (a role, SSO): ask botocore each time, it refreshes as needed.
            provider = awscrt.auth.AwsCredentialsProvider.new_delegate(
                lambda: _crt_credentials(credentials)
            )
        else:
            frozen = credentials.get_frozen_credentials()
            provider = awscrt.auth.AwsCredentialsProvider.new_static(
                frozen.access_key, frozen.secret_key, frozen.token
            )
        tls_options = None
        if tls:
            options = awscrt.io.TlsContextOptions()
            bundle = os.environ.get("AWS_CA_BUNDLE")
            if bundle:
                options.override_default_trust_store_from_path(ca_filepath=bundle)
            tls_options = awscrt.io.ClientTlsContext(options).new_connection_options()
        loops = awscrt.io.EventLoopGroup()
        bootstrap = awscrt.io.ClientBootstrap(loops, awscrt.io.DefaultHostResolver(loops))
        self._client = awscrt.s3.S3Client(
            bootstrap=bootstrap,
            region=region,
            credential_provider=provider,
            tls_mode=(
                awscrt.s3.S3RequestTlsMode.ENABLED if tls else awscrt.s3.S3RequestTlsMode.DISABLED
            ),
            tls_connection_options=tls_options,
            # The same patience as the boto3 client (the CRT cannot do fewer than 1 retry).
            retry_config=awscrt.s3.S3RetryConfig(max_retries=max(1, max_attempts - 1)),
            connect_timeout_ms=max(1, int(connect_timeout * 1000)),
        )

    def _request(
        self, method: str, full_key: str, headers: list[tuple[str, str]]
    ) -> Any:  # awscrt.http.HttpRequest
        path = f"{self._base}/{quote(full_key, safe='/~')}"
        return awscrt.http.HttpRequest(
            method, path, awscrt.http.HttpHeaders([("Host", self._host), *headers])
        )

    def _run(self, request: Any, operation: str, **options: Any) -> _CrtReply:
        """Send ``request`` and wait; raises awscrt's errors (the caller translates).

        GetObject goes as the CRT's GET_OBJECT meta request: a large object comes in
        ranged parts over parallel connections (each part conditional on the first
        part's ETag), handed to ``on_body`` in order, one callback per part; a small
        one is a single GET. DEFAULT requests would buffer a whole body in memory.
        """
        reply: dict[str, Any] = {}

        def on_headers(status_code: int, headers: list[tuple[str, str]], **_: Any) -> None:
            reply["status"] = status_code  # a retry's reply replaces an earlier one
            reply["headers"] = {k.lower(): v for k, v in headers}

        if operation == "GetObject":
            kind, options = awscrt.s3.S3RequestType.GET_OBJECT, {"part_size": GET_PART, **options}
        elif operation == "GetObjectWhole":
            kind, options = (
                awscrt.s3.S3RequestType.DEFAULT,
                {"operation_name": "GetObject", **options},
            )
        else:
            kind, options = (
                awscrt.s3.S3RequestType.DEFAULT,
                {"operation_name": operation, **options},
            )
        made = self._client.make_request(
            type=kind, request=request, on_headers=on_headers, **options
        )
        made.finished_future.result()
        return _CrtReply(int(reply.get("status", 0)), reply.get("headers", {}))

    def put(self, full_key: str, src: Path, size: int, headers: list[tuple[str, str]]) -> str:
        """PutObject of the file ``src`` (``size`` bytes); returns the reply's raw ETag."""
        request = self._request("PUT", full_key, [("Content-Length", str(size)), *headers])
        # The CRT reads the file itself: no Python in the body's path.
        reply = self._run(request, "PutObject", send_filepath=str(src))
        return reply.headers.get("etag", "")

    def get(self, full_key: str, dest: Path, progress: ProgressCallback | None) -> str:
        """GetObject into ``dest``; returns the MD5 of the bytes written, hashed as written."""
        sink = _HashingSink(dest, progress)
        try:
            try:
                request = self._request("GET", full_key, [("Content-Length", "0")])
                self._run(request, "GetObject", on_body=sink.write)
            except awscrt.s3.S3ResponseError as exc:
                if exc.status_code != 416:
                    raise
                # An empty object has no byte range to ask for: one plain GET instead.
                sink.restart()
                request = self._request("GET", full_key, [("Content-Length", "0")])
                self._run(request, "GetObjectWhole", on_body=sink.write)
        finally:
            sink.close()
        return sink.result()


def _crt_credentials(credentials: Any) -> Any:  # awscrt.auth.AwsCredentials
    frozen = credentials.get_frozen_credentials()
    return awscrt.auth.AwsCredentials(frozen.access_key, frozen.secret_key, frozen.token)


class _HashingSink:
    """Writes a response body to a file in order, hashing it on the way.

    Called on a CRT thread. A failure is kept and raised by :meth:`result` (an exception
    escaping a CRT callback would be lost); a body restarted at offset 0 (the CRT retried
    the whole request) starts the file and the hash again.
    """

    def __init__(self, dest: Path, progress: ProgressCallback | None) -> None:
        self._fh = dest.open("wb")
        self._md5 = hashlib.md5(usedforsecurity=False)
        self._written = 0
        self._progress = progress
        self._failure: BaseException | None = None

    def restart(self) -> None:
        self._fh.seek(0)
        self._fh.truncate()
        self._md5 = hashlib.md5(usedforsecurity=False)
        self._written = 0
        self._failure = None

    def write(self, chunk: Any, offset: int, **_: Any) -> None:
        if self._failure is not None:
            return
        try:
            if offset == 0 and self._written:
                self.restart()
            elif offset != self._written:
                raise TransferError(f"response body out of order at {offset} of {self._written}")
            self._fh.write(chunk)
            self._md5.update(chunk)
            self._written += len(chunk)
            if self._progress is not None:
                self._progress(len(chunk))
        except BaseException as exc:  # kept, and raised in the waiting thread
            self._failure = exc

    def close(self) -> None:
        self._fh.close()

    def result(self) -> str:
        if self._failure is not None:
            raise self._failure
        return self._md5.hexdigest()


def _xml_error_code(body: bytes | None) -> tuple[str, str]:
    """(Code, Message) of an S3 XML error body, or empty strings."""
    if not body:
        return "", ""
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError:
        return "", ""
    return (root.findtext("Code") or "").strip(), (root.findtext("Message") or "").strip()


class S3Remote(Remote):
    """An S3 bucket prefix. Keys are relative to ``prefix``.

    The client is injected (tests and the daemon may build their own); :meth:`close`
    closes it.
    """

    name = "S3"

    def __init__(
        self,
        bucket: str,
        prefix: str,
        client: S3Client,
        *,
        multipart_threshold: int = DEFAULT_MULTIPART_THRESHOLD,
        multipart_chunksize: int | None = None,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        copy_threshold: int = MAX_SINGLE_COPY,
        stale_upload_age: float = 86400.0,
        transfer_engine: TransferEngine = TransferEngine.AUTO,
        credentials: Any = None,
    ) -> None:
        if not bucket or "/" in bucket:
            raise ConfigError(f"invalid S3 bucket name {bucket!r}")
        self.bucket = bucket
        self.prefix = normalize_prefix(prefix)
        self._client = client
        self._transfer = TransferConfig(
            multipart_threshold=multipart_threshold,
            multipart_chunksize=multipart_chunksize or multipart_threshold,
            max_concurrency=max_concurrency,
        )
        self._copy_threshold = min(copy_threshold, MAX_SINGLE_COPY)
        self._stale_upload_age = stale_upload_age
        # Whether CopyObject accepts If-None-Match: assumed until a server says otherwise.
        self._copy_if_none_match = True
        # Whether DeleteObject accepts If-Match: likewise.
        self._delete_if_match = True
        self._conditional: bool | None = None
        # Whether this bucket's single-part ETags are the content's MD5 (False under
        # SSE-KMS). Unknown until one of our own PUTs tells: per process, and the start-up
        # probe is such a PUT, so it is known before the first listing.
        self._etags_are_md5: bool | None = None
        self._etag_lock = threading.Lock()
        self._probe_lock = threading.Lock()
        # Counts HTTP requests actually sent (retries included), for `status` and tests.
        self._requests = 0
        self._count_lock = threading.Lock()
        client.meta.events.register("before-send.s3", self._count_request)
        # Data transfers below the multipart threshold, when the CRT can carry them.
        self._crt = self._make_crt(transfer_engine, credentials)

    def _make_crt(self, engine: TransferEngine, credentials: Any) -> _CrtTransport | None:
        if engine is TransferEngine.BOTO3:
            return None
        if not HAVE_CRT:
            if engine is TransferEngine.CRT:
                raise ConfigError(
                    "transfer_engine 'crt' needs the awscrt package (pip install 'boto3[crt]')"
                )
            return None
        meta = self._client.meta
        if credentials is None:
            # The credentials the client signs with. botocore has no public accessor on a
            # client; without one, the CRT is simply not used.
            credentials = getattr(self._client, "_request_signer", None)
            credentials = getattr(credentials, "_credentials", None)
        if credentials is None or not meta.region_name:
            if engine is TransferEngine.CRT:
                raise ConfigError("transfer_engine 'crt' needs credentials and a region")
            log.info("data transfers use boto3 (no static credentials or region for the CRT)")
            return None
        style = (getattr(meta.config, "s3", None) or {}).get("addressing_style")
        # Virtual-hosted names with a '.' break TLS hostname checks; S3-compatible servers
        # generally want path-style.
        path_style = style == "path" or _is_custom_endpoint(meta.endpoint_url) or "." in self.bucket
        try:
            transport = _CrtTransport(
                meta.endpoint_url,
                meta.region_name,
                credentials,
                self.bucket,
                path_style,
                max_attempts=int(
                    (getattr(meta.config, "retries", None) or {}).get("max_attempts", 5)
                ),
                connect_timeout=float(getattr(meta.config, "connect_timeout", None) or 60),
            )
        except (awscrt.exceptions.AwsCrtError, BotoCoreError, RuntimeError) as exc:
            if engine is TransferEngine.CRT:
                raise ConfigError(f"cannot set up the CRT S3 client: {exc}") from exc
            log.warning("data transfers use boto3: the CRT S3 client failed to start (%s)", exc)
            return None
        log.debug("data transfers below %d bytes use the CRT", self._transfer.multipart_threshold)
        return transport

    def _crt_error(self, exc: Exception, what: str, operation: str) -> SyncError:
        """An awscrt failure as the same error the boto3 path raises for that reply."""
        status = getattr(exc, "status_code", None)
        if isinstance(exc, awscrt.s3.S3ResponseError) and status:
            code, message = _xml_error_code(exc.body)
            response: dict[str, Any] = {
                "Error": {"Code": code or str(status), "Message": message},
                "ResponseMetadata": {"HTTPStatusCode": int(status)},
            }
            return self._error(ClientError(response, operation), what)  # type: ignore[arg-type]
        name = str(getattr(exc, "name", type(exc).__name__))
        if name.startswith(_CRT_CONNECTION_ERRORS):
            return EndpointError(f"cannot reach the S3 endpoint {self.endpoint} ({name})")
        return TransferError(f"{what} failed: {name}")

    def _count_request(self, **_: Any) -> None:
        with self._count_lock:
            self._requests += 1

    def request_count(self) -> int:
        with self._count_lock:
            return self._requests

    @classmethod
    def from_config(cls, settings: dict[str, Any]) -> S3Remote:
        """Build from the ``[s3]`` table.

        Keys: ``bucket`` (required), ``prefix``, ``endpoint_url``, ``region``, ``profile``,
        ``credentials`` (``aws_access_key_id``, ``aws_secret_access_key``,
        ``aws_session_token``), and the tuning knobs ``multipart_threshold``,
        ``multipart_chunksize``, ``max_concurrency``, ``max_attempts``,
        ``connect_timeout``, ``read_timeout``. Without ``endpoint_url`` boto3's own
        resolution applies (``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL``, the profile).
        """
        bucket = settings.get("bucket")
        if not isinstance(bucket, str) or not bucket:
            raise ConfigError("the S3 platform needs a 'bucket'")
        prefix = settings.get("prefix") or ""
        if not isinstance(prefix, str):
            raise ConfigError("the S3 'prefix' must be a string")
        endpoint = settings.get("endpoint_url") or None
        credentials = _credentials(settings.get("credentials"))
        config_args: dict[str, Any] = {
            "retries": {"mode": "standard", "max_attempts": _int(settings, "max_attempts", 5)},
            "max_pool_connections": 32,
        }
        for knob in ("connect_timeout", "read_timeout"):
            if settings.get(knob) is not None:
                config_args[knob] = _number(settings, knob)
        base_config = Config(**config_args)
        path_style = Config(s3={"addressing_style": "path"})
        try:
            core = botocore.session.get_session()
            core.get_component("response_parser_factory").set_parser_defaults(
                timestamp_parser=_timestamp
            )
            session = boto3.session.Session(
                botocore_session=core,
                profile_name=settings.get("profile") or None,
                region_name=settings.get("region") or None,
                aws_access_key_id=credentials.get("aws_access_key_id"),
                aws_secret_access_key=credentials.get("aws_secret_access_key"),
                aws_session_token=credentials.get("aws_session_token"),
            )
            client = session.client(
                "s3",
                endpoint_url=endpoint,
                config=base_config.merge(path_style) if endpoint else base_config,
            )
            resolved = client.meta.endpoint_url
            if not endpoint and _is_custom_endpoint(resolved):
                # The endpoint came from the environment or the profile: S3-compatible
                # servers need path-style addressing, so build the client again with it.
                client.close()
                client = session.client(
                    "s3", endpoint_url=resolved, config=base_config.merge(path_style)
                )
        except ProfileNotFound as exc:
            raise ConfigError(f"AWS profile {settings.get('profile')!r} not found") from exc
        except (BotoCoreError, ValueError) as exc:
            raise ConfigError(f"cannot set up the S3 client: {exc}") from exc
        threshold = _int(settings, "multipart_threshold", DEFAULT_MULTIPART_THRESHOLD)
        engine_name = settings.get("transfer_engine") or TransferEngine.AUTO.value
        try:
            engine = TransferEngine(engine_name)
        except ValueError:
            choices = ", ".join(e.value for e in TransferEngine)
            raise ConfigError(f"the S3 'transfer_engine' must be one of {choices}") from None
        return cls(
            bucket,
            prefix,
            client,
            multipart_threshold=threshold,
            multipart_chunksize=_int(settings, "multipart_chunksize", threshold),
            max_concurrency=_int(settings, "max_concurrency", DEFAULT_MAX_CONCURRENCY),
            transfer_engine=engine,
            credentials=session.get_credentials(),
        )

    # -- helpers -------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        return _redact_url(self._client.meta.endpoint_url)

    def _full_key(self, key: str) -> str:
        _check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _error(self, exc: BaseException, what: str) -> SyncError:
        return _translate(exc, what, self.bucket, self.endpoint)

    @contextlib.contextmanager
    def _translated(self, what: str) -> Iterator[None]:
        try:
            yield
        except (ClientError, BotoCoreError, Boto3Error) as exc:
            raise self._error(exc, what) from exc

    def _etag(self, raw: str) -> str:
        """The ETag of a server reply as we keep it. Every reply's ETag enters here, and
        every ETag sent back leaves through :meth:`_wire_etag`: the seam where a test
        platform stands in for a bucket whose ETags are not MD5s (SSE-KMS)."""
        return _strip_etag(raw)

    def _wire_etag(self, etag: str) -> str:
        """An ETag we hold, as sent in ``If-Match`` / ``If-None-Match``."""
        return _quoted(etag)

    def _learn_etag(self, etag: str, md5: str) -> None:
        """A single-part PUT of content whose MD5 we know: is its ETag that MD5?"""
        same = etag.lower() == md5
        with self._etag_lock:
            before = self._etags_are_md5
            # One contradiction is enough: never trust ETags again in this process.
            self._etags_are_md5 = same and before is not False
        if not same and before is not False:
            log.info(
                "%s: ETags are not MD5s (e.g. SSE-KMS); using the md5 metadata instead",
                self.describe(),
            )

    def _md5_of_etag(self, etag: str) -> str | None:
        """The MD5 an ETag stands for, if this bucket's ETags are known to be MD5s."""
        return _plain_md5(etag) if self._etags_are_md5 else None

    def close(self) -> None:
        """Close the client's connection pool (and let the CRT client's threads go)."""
        self._crt = None
        self._client.close()

    def describe(self) -> str:
        where = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        url = self._client.meta.endpoint_url
        return f"{where} at {self.endpoint}" if _is_custom_endpoint(url) else where

    # -- Remote ----------------------------------------------------------------------

    def check(self) -> None:
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            code, status = _error_parts(exc)
            # HEAD has no body, so a missing bucket is a bare 404.
            if status == 404 or code in ("404", "NoSuchBucket", "NotFound"):
                raise BucketNotFoundError(f"bucket '{self.bucket}' does not exist") from exc
            if status == 403 or code in _AUTH_CODES:
                raise AuthError(
                    f"access to bucket '{self.bucket}' was denied; "
                    "check the credentials and the bucket policy"
                ) from exc
            raise self._error(exc, f"checking bucket '{self.bucket}'") from exc
        except (BotoCoreError, Boto3Error) as exc:
            raise self._error(exc, f"checking bucket '{self.bucket}'") from exc
        self._abort_abandoned_uploads()

    def _abort_abandoned_uploads(self) -> None:
        """Abort multipart uploads under our prefix older than ``stale_upload_age``.

        A transfer killed mid-way leaves its parts stored (and billed) forever; nothing
        else will ever complete them. Best effort: a refusal is logged, never fatal.
        """
        cutoff = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=self._stale_upload_age)
        prefix = f"{self.prefix}/" if self.prefix else ""
        try:
            pages = self._client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=prefix
            )
            for page in pages:
                for up in page.get("Uploads", []):
                    if up["Initiated"] <= cutoff:
                        self._client.abort_multipart_upload(
                            Bucket=self.bucket, Key=up["Key"], UploadId=up["UploadId"]
                        )
                        log.info("aborted an abandoned upload of %s", up["Key"])
        except (ClientError, BotoCoreError, Boto3Error) as exc:
            log.warning("could not clean up abandoned uploads: %s", exc)

    def list(self, under: str = "") -> dict[str, RemoteObject]:
        if under.startswith("/") or ".." in under.split("/"):
            raise UnsafePathError(f"unsafe listing prefix {under!r}")
        base = f"{self.prefix}/" if self.prefix else ""
        found: dict[str, RemoteObject] = {}
        paginator = self._client.get_paginator("list_objects_v2")
        with self._translated(f"listing {self.describe()}"):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=base + under):
                for item in page.get("Contents", []):
                    key = item["Key"][len(base) :]
                    # "folder/" markers made by consoles are not files.
                    if not key or key.endswith("/"):
                        continue
                    if not under and key.startswith(STATE_PREFIX):
                        continue
                    key = sys.intern(key)  # shared with the manifest and the index
                    etag = self._etag(item.get("ETag", ""))
                    md5 = self._md5_of_etag(etag)
                    if md5 is not None:
                        md5 = sys.intern(md5)
                        etag = md5 if md5 == etag else etag
                    found[key] = RemoteObject(
                        key=key, size=int(item.get("Size", 0)), etag=etag, md5=md5
                    )
        return found

    def stat(self, key: str) -> RemoteObject | None:
        full = self._full_key(key)
        try:
            with self._translated(f"stat {key}"):
                head = self._client.head_object(Bucket=self.bucket, Key=full)
        except RemoteNotFoundError:
            return None
        etag = self._etag(head.get("ETag", ""))
        recorded = head.get("Metadata", {}).get(MD5_METADATA, "").lower()
        md5 = recorded if _HEX_MD5.fullmatch(recorded) else self._md5_of_etag(etag)
        return RemoteObject(key=key, size=int(head.get("ContentLength", 0)), etag=etag, md5=md5)

    def download(
        self, key: str, dest: Path, progress: ProgressCallback | None = None
    ) -> str | None:
        full = self._full_key(key)
        what = f"download {key}"
        if self._crt is not None:
            self._count_request()
            try:
                written = self._crt.get(full, dest, progress)
            except OSError as exc:
                raise TransferError(f"cannot write {dest}: {exc.strerror or exc}") from exc
            except awscrt.exceptions.AwsCrtError as exc:
                raise self._crt_error(exc, what, "GetObject") from exc
            log.debug("downloaded %s to %s", key, dest)
            return written
        digest = hashlib.md5(usedforsecurity=False)
        try:
            with self._translated(f"download {key}"):
                # One streamed GET: the managed transfer's extra HEAD and thread pool
                # cost more than they save on the small files most folders hold.
                body = self._client.get_object(Bucket=self.bucket, Key=full)["Body"]
                try:
                    with dest.open("wb") as fh:
                        for chunk in body.iter_chunks(STREAM_CHUNK):
                            fh.write(chunk)
                            digest.update(chunk)
                            if progress is not None:
                                progress(len(chunk))
                finally:
                    body.close()
        except OSError as exc:
            raise TransferError(f"cannot write {dest}: {exc.strerror or exc}") from exc
        log.debug("downloaded %s to %s", key, dest)
        return digest.hexdigest()

    def upload(
        self,
        src: Path,
        key: str,
        md5: str,
        progress: ProgressCallback | None = None,
        *,
        if_match: str | None = None,
        create_only: bool = False,
    ) -> RemoteObject:
        if if_match and create_only:
            raise ValueError("upload: if_match and create_only exclude each other")
        full = self._full_key(key)
        md5 = md5.lower()
        if not _HEX_MD5.fullmatch(md5):
            raise ValueError(f"md5 must be 32 hex digits, got {md5!r}")
        # The same headers on PutObject and CompleteMultipartUpload: the object is replaced
        # only if it is still the one the caller planned over (or still absent).
        conditions: dict[str, str] = {}
        if if_match:
            conditions["IfMatch"] = self._wire_etag(if_match)
        elif create_only:
            conditions["IfNoneMatch"] = "*"
        what = f"upload {key}"
        try:
            size = src.stat().st_size
            if size < self._transfer.multipart_threshold:
                obj = self._put_small(src, key, full, md5, size, progress, conditions)
            else:
                obj = self._put_multipart(src, key, full, md5, size, progress, conditions)
        except OSError as exc:
            raise TransferError(f"cannot read {src}: {exc.strerror or exc}") from exc
        except RemoteNotFoundError as exc:
            if not if_match:
                raise
            # AWS answers If-Match on a missing key with 404 (SeaweedFS with 412).
            raise PreconditionFailedError(f"{what}: the object no longer exists") from exc
        log.debug("uploaded %s to %s", src, key)
        return obj

    def _put_small(
        self,
        src: Path,
        key: str,
        full: str,
        md5: str,
        size: int,
        progress: ProgressCallback | None,
        conditions: Mapping[str, str],
    ) -> RemoteObject:
        # Content-MD5 makes the server refuse bytes that are not the content we hashed,
        # e.g. a file rewritten while it was being sent.
        digest = base64.b64encode(bytes.fromhex(md5)).decode()
        if self._crt is not None:
            raw = self._put_crt(src, key, full, md5, digest, size, conditions)
        else:
            with src.open("rb") as fh, self._translated(f"upload {key}"):
                reply = self._client.put_object(
                    Bucket=self.bucket,
                    Key=full,
                    Body=fh,
                    ContentMD5=digest,
                    Metadata={MD5_METADATA: md5},
                    **conditions,  # type: ignore[arg-type]
                )
            raw = reply["ETag"]
        if progress is not None:
            progress(size)
        etag = self._etag(raw)
        self._learn_etag(etag, md5)  # Content-MD5 made the server store exactly ``md5``
        return RemoteObject(key, size, etag, md5)

    def _put_crt(
        self,
        src: Path,
        key: str,
        full: str,
        md5: str,
        content_md5: str,
        size: int,
        conditions: Mapping[str, str],
    ) -> str:
        """The same PutObject as the boto3 path, sent by the CRT; returns the raw ETag."""
        assert self._crt is not None
        headers = [("Content-MD5", content_md5), (f"x-amz-meta-{MD5_METADATA}", md5)]
        if "IfMatch" in conditions:
            headers.append(("If-Match", conditions["IfMatch"]))
        if "IfNoneMatch" in conditions:
            headers.append(("If-None-Match", conditions["IfNoneMatch"]))
        self._count_request()
        try:
            return self._crt.put(full, src, size, headers)
        except awscrt.exceptions.AwsCrtError as exc:
            raise self._crt_error(exc, f"upload {key}", "PutObject") from exc

    def _put_multipart(
        self,
        src: Path,
        key: str,
        full: str,
        md5: str,
        size: int,
        progress: ProgressCallback | None,
        conditions: Mapping[str, str],
    ) -> RemoteObject:
        """Parts read once, in order, and hashed as sent; the precondition rides on the
        complete request (s3transfer's upload_fileobj cannot pass If-Match/If-None-Match)."""
        what = f"upload {key}"
        chunk = ChunksizeAdjuster().adjust_chunksize(self._transfer.multipart_chunksize, size)
        workers = max(1, self._transfer.max_request_concurrency)
        with self._translated(what):
            upload_id = self._client.create_multipart_upload(
                Bucket=self.bucket, Key=full, Metadata={MD5_METADATA: md5}
            )["UploadId"]
        sent = hashlib.md5(usedforsecurity=False)
        total = 0
        parts: list[CompletedPartTypeDef] = []
        try:
            with (
                src.open("rb") as fh,
                ThreadPoolExecutor(workers, thread_name_prefix="s3syncd-part") as pool,
                self._translated(what),
            ):
                in_flight: deque[Future[CompletedPartTypeDef]] = deque()
                number = 0
                while data := fh.read(chunk):
                    number += 1
                    total += len(data)
                    sent.update(data)
                    in_flight.append(
                        pool.submit(self._put_part, full, upload_id, number, data, progress)
                    )
                    # Bounded memory: at most `workers` parts held at once.
                    while len(in_flight) >= workers:
                        parts.append(in_flight.popleft().result())
                while in_flight:
                    parts.append(in_flight.popleft().result())
                reply = self._client.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=full,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                    **conditions,  # type: ignore[arg-type]
                )
        except BaseException:
            with contextlib.suppress(ClientError, BotoCoreError):
                self._client.abort_multipart_upload(
                    Bucket=self.bucket, Key=full, UploadId=upload_id
                )
            raise
        digest = sent.hexdigest()
        if digest != md5:
            log.warning("%s changed while it was uploaded; the stored copy is not %s", key, md5)
        # The MD5 of the bytes actually sent, read once in order: what the object holds.
        return RemoteObject(key, total, self._etag(reply.get("ETag", "")), digest)

    def _put_part(
        self,
        full: str,
        upload_id: str,
        number: int,
        data: bytes,
        progress: ProgressCallback | None,
    ) -> CompletedPartTypeDef:
        reply = self._client.upload_part(
            Bucket=self.bucket,
            Key=full,
            UploadId=upload_id,
            PartNumber=number,
            Body=data,
            ContentMD5=base64.b64encode(hashlib.md5(data).digest()).decode(),
        )
        if progress is not None:
            progress(len(data))
        return {"ETag": reply["ETag"], "PartNumber": number}

    def delete(self, key: str, *, if_match: str | None = None) -> None:
        full = self._full_key(key)
        what = f"delete {key}"
        if if_match and self._delete_if_match:
            try:
                self._client.delete_object(
                    Bucket=self.bucket, Key=full, IfMatch=self._wire_etag(if_match)
                )
                return
            except ClientError as exc:
                code, status = _error_parts(exc)
                if code not in _UNSUPPORTED_CODES and status != 501:
                    error = self._error(exc, what)
                    if isinstance(error, RemoteNotFoundError):
                        return  # already gone (AWS answers a missing key with 404)
                    if isinstance(error, PreconditionFailedError) and self.stat(key) is None:
                        return  # SeaweedFS answers a missing key with 412
                    raise error from exc
                log.info("server refuses If-Match on DeleteObject (%s); deleting without", code)
                self._delete_if_match = False
            except (BotoCoreError, Boto3Error) as exc:
                raise self._error(exc, what) from exc
        with contextlib.suppress(RemoteNotFoundError), self._translated(what):
            self._client.delete_object(Bucket=self.bucket, Key=full)

    def copy(self, src_key: str, dst_key: str, *, source_etag: str | None = None) -> None:
        src_full, dst_full = self._full_key(src_key), self._full_key(dst_key)
        # The HEAD catches an existing destination on every server; If-None-Match below
        # closes the race window where the server supports it.
        if self.stat(dst_key) is not None:
            raise PreconditionFailedError(f"copy {src_key} -> {dst_key}: destination exists")
        source = self.stat(src_key)
        if source is None:
            raise RemoteNotFoundError(f"copy {src_key} -> {dst_key}: no such object")
        what = f"copy {src_key} -> {dst_key}"
        # Checked here too for servers that ignore CopySourceIfMatch (moto does).
        if source_etag is not None and source.etag != _strip_etag(source_etag):
            raise PreconditionFailedError(f"{what}: the source is not the version expected")
        copy_source: CopySourceTypeDef = {"Bucket": self.bucket, "Key": src_full}
        source_if: dict[str, str] = (
            {} if source_etag is None else {"CopySourceIfMatch": self._wire_etag(source_etag)}
        )
        if source.size > self._copy_threshold:
            # Managed multipart copy; it carries the metadata (our md5) over itself.
            with self._translated(what):
                self._client.copy(
                    copy_source,
                    self.bucket,
                    dst_full,
                    ExtraArgs=source_if or None,
                    Config=self._transfer,
                )
            return
        if self._copy_if_none_match:
            try:
                self._client.copy_object(
                    Bucket=self.bucket,
                    Key=dst_full,
                    CopySource=copy_source,
                    IfNoneMatch="*",
                    **source_if,  # type: ignore[arg-type]
                )
                return
            except ClientError as exc:
                code, status = _error_parts(exc)
                if code not in _UNSUPPORTED_CODES and status != 501:
                    raise self._error(exc, what) from exc
                log.info("server refuses If-None-Match on CopyObject (%s); copying without", code)
                self._copy_if_none_match = False
            except (BotoCoreError, Boto3Error) as exc:
                raise self._error(exc, what) from exc
        with self._translated(what):
            self._client.copy_object(
                Bucket=self.bucket,
                Key=dst_full,
                CopySource=copy_source,
                **source_if,  # type: ignore[arg-type]
            )

    def read_blob(self, key: str, if_none_match: str | None = None) -> Blob | NotModified | None:
        full = self._full_key(key)
        what = f"read {key}"
        try:
            if if_none_match:
                response = self._client.get_object(
                    Bucket=self.bucket, Key=full, IfNoneMatch=self._wire_etag(if_none_match)
                )
            else:
                response = self._client.get_object(Bucket=self.bucket, Key=full)
            body = response["Body"]
            try:
                data = body.read()
            finally:
                body.close()
        except ClientError as exc:
            code, status = _error_parts(exc)
            if status == 304 or code == "304":
                return NOT_MODIFIED
            error = self._error(exc, what)
            if isinstance(error, RemoteNotFoundError):
                return None
            raise error from exc
        except (BotoCoreError, Boto3Error) as exc:
            raise self._error(exc, what) from exc
        return Blob(data=data, etag=self._etag(response.get("ETag", "")))

    def write_blob(
        self, key: str, data: bytes, if_match: str | None = None, create_only: bool = False
    ) -> str:
        if if_match and create_only:
            raise ValueError("write_blob: if_match and create_only exclude each other")
        what = f"write {key}"
        md5 = hashlib.md5(data).hexdigest()
        request: PutObjectRequestTypeDef = {
            "Bucket": self.bucket,
            "Key": self._full_key(key),
            "Body": data,
            "Metadata": {MD5_METADATA: md5},
        }
        if if_match:
            request["IfMatch"] = self._wire_etag(if_match)
        elif create_only:
            request["IfNoneMatch"] = "*"
        try:
            with self._translated(what):
                response = self._client.put_object(**request)
        except RemoteNotFoundError as exc:
            if not if_match:
                raise
            # AWS answers If-Match on a missing key with 404 (SeaweedFS with 412): either
            # way the object is not the one the caller read.
            raise PreconditionFailedError(f"{what}: the object no longer exists") from exc
        etag = self._etag(response.get("ETag", ""))
        self._learn_etag(etag, md5)
        return etag

    # --- object versions (s3syncctl history/trash/restore; additive, read-only) ----------
    def list_versions(self, under: str = "") -> tuple[ObjectVersion, ...]:
        if under.startswith("/") or ".." in under.split("/"):
            raise UnsafePathError(f"unsafe listing prefix {under!r}")
        with self._translated(f"versioning of {self.describe()}"):
            status = self._client.get_bucket_versioning(Bucket=self.bucket).get("Status")
        if status not in ("Enabled", "Suspended"):
            return ()  # never versioned: one request tells, no listing needed
        base = f"{self.prefix}/" if self.prefix else ""
        found: dict[tuple[str, str], ObjectVersion] = {}
        paginator = self._client.get_paginator("list_object_versions")
        with self._translated(f"listing versions in {self.describe()}"):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=base + under):
                for item in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]:
                    key = str(item.get("Key", ""))[len(base) :]
                    if not key or key.endswith("/"):
                        continue
                    if not under and key.startswith(STATE_PREFIX):
                        continue
                    marker = "ETag" not in item  # delete markers have neither ETag nor Size
                    modified = item.get("LastModified")
                    version = ObjectVersion(
                        key=key,
                        version_id=str(item.get("VersionId", "")),
                        size=int(str(item.get("Size", 0))),
                        etag="" if marker else self._etag(str(item.get("ETag", ""))),
                        modified=modified.timestamp() if modified else 0.0,
                        latest=bool(item.get("IsLatest")),
                        delete_marker=marker,
                    )
                    found[(key, version.version_id)] = version
        return tuple(found.values())

    def download_version(self, key: str, version_id: str, dest: Path) -> None:
        full = self._full_key(key)
        try:
            with self._translated(f"download {key} version {version_id}"):
                body = self._client.get_object(Bucket=self.bucket, Key=full, VersionId=version_id)[
                    "Body"
                ]
                try:
                    with dest.open("wb") as fh:
                        for chunk in body.iter_chunks(STREAM_CHUNK):
                            fh.write(chunk)
                finally:
                    body.close()
        except OSError as exc:
            raise TransferError(f"cannot write {dest}: {exc.strerror or exc}") from exc

    def supports_conditional_writes(self) -> bool:
        """Probe once: create-only twice and a stale If-Match must both be refused."""
        with self._probe_lock:
            if self._conditional is None:
                self._conditional = self._probe_conditional_writes()
            return self._conditional

    def _probe_conditional_writes(self) -> bool:
        probe = f"{STATE_PREFIX}probe-{uuid.uuid4().hex}"
        fatal = (AuthError, EndpointError, BucketNotFoundError)
        try:
            self.write_blob(probe, b"probe", create_only=True)
        except fatal:
            raise
        except RemoteError as exc:
            # e.g. 501 NotImplemented for If-None-Match: the server has no conditional writes.
            log.warning("%s refuses conditional writes: %s", self.describe(), exc)
            return False
        try:
            refused = 0
            attempts: tuple[dict[str, Any], ...] = ({"create_only": True}, {"if_match": "0" * 32})
            for conditions in attempts:
                try:
                    self.write_blob(probe, b"probe-overwrite", **conditions)
                except PreconditionFailedError:
                    refused += 1
                except fatal:
                    raise
                except RemoteError as exc:
                    log.warning("conditional write probe on %s failed: %s", self.describe(), exc)
        finally:
            self.delete(probe)
        supported = refused == len(attempts)
        log.info("%s %s conditional writes", self.describe(), "honours" if supported else "ignores")
        return supported


def _credentials(raw: object) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ConfigError("the S3 'credentials' must be a table")
    allowed = ("aws_access_key_id", "aws_secret_access_key", "aws_session_token")
    unknown = sorted(set(raw) - set(allowed))
    if unknown:
        # Names only: values may be secrets.
        raise ConfigError(f"unknown S3 credential keys: {', '.join(map(str, unknown))}")
    creds = {name: raw[name] for name in allowed if raw.get(name)}
    if any(not isinstance(value, str) for value in creds.values()):
        raise ConfigError("the S3 credentials must be strings")
    return creds


def _int(settings: Mapping[str, Any], name: str, default: int) -> int:
    value = settings.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"the S3 setting {name!r} must be a positive integer")
    return value


def _number(settings: Mapping[str, Any], name: str) -> float:
    value = settings.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(f"the S3 setting {name!r} must be a positive number")
    return float(value)
