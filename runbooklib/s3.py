"""A small S3 client: just what the archive needs, signed with AWS Signature Version 4.

Path-style requests (``https://endpoint/bucket/key``), which MinIO, Ceph RGW, versitygw and the
S3-compatible services of most providers accept. Written on the standard library rather than on
boto3, whose botocore pins ``python-dateutil<3`` and would move a dependency the notebooks' stack
already uses; the archive needs a dozen calls, each spelled out here with its headers (Object Lock
retention, ``If-None-Match: *``, ``If-Match``, governance bypass) so what goes on the wire is plain.

The secret key is kept out of every repr and message; errors name the call, the bucket and key,
and what the store answered.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import http.client
import ssl
import threading
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass

from .errors import RunbookError


class S3Error(RunbookError):
    """The store answered with an error (``status``, S3 ``code``), or could not be reached (status 0)."""

    def __init__(self, message: str, status: int = 0, code: str = ""):
        super().__init__(message)
        self.status = status
        self.code = code


@dataclass
class Put:
    etag: str
    version_id: str | None


@dataclass
class Version:
    key: str
    version_id: str
    is_latest: bool
    delete_marker: bool
    etag: str
    size: int
    last_modified: str


def _quote(text: str, safe: str = "-_.~") -> str:
    return urllib.parse.quote(text, safe=safe)


def _strip_ns(root: ET.Element) -> ET.Element:
    for el in root.iter():
        if "}" in el.tag:
            el.tag = el.tag.split("}", 1)[1]
    return root


def _text(el: ET.Element, tag: str, default: str = "") -> str:
    found = el.find(tag)
    return found.text or default if found is not None and found.text is not None else default


def iso_z(when: dt.datetime) -> str:
    return when.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


class S3Client:
    """One endpoint, one region, one key pair. Thread-safe: each thread keeps its own connection."""

    def __init__(self, endpoint: str, region: str, access_key: str, secret_key: str, *, timeout: float = 30.0,
                 ca_file: str | None = None):
        url = urllib.parse.urlsplit(endpoint)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise S3Error(f"endpoint {endpoint!r}: expected http(s)://host[:port]")
        self.endpoint = endpoint.rstrip("/")
        self.scheme = url.scheme
        self.host = url.hostname
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self.netloc = url.netloc
        self.base_path = url.path.rstrip("/")
        self.region = region
        self._access_key = access_key
        self._secret_key = secret_key
        self.timeout = timeout
        self._ssl = ssl.create_default_context(cafile=ca_file) if url.scheme == "https" else None
        self._local = threading.local()

    def __repr__(self) -> str:  # never the keys
        return f"S3Client({self.endpoint}, region {self.region})"

    # -- the wire ------------------------------------------------------------------------------
    def _conn(self, fresh: bool = False) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None or fresh:
            if conn is not None:
                conn.close()
            if self._ssl is not None:
                conn = http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout, context=self._ssl)
            else:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            self._local.conn = conn
        return conn

    def _sign(self, method: str, path: str, query: dict[str, str], headers: dict[str, str], payload_hash: str) -> None:
        now = dt.datetime.now(dt.timezone.utc)
        amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
        headers["x-amz-date"] = amz_date
        headers["x-amz-content-sha256"] = payload_hash
        headers["host"] = self.netloc
        signed = sorted(k.lower() for k in headers)
        canonical_headers = "".join(f"{k}:{' '.join(str(headers[k]).split())}\n" for k in signed)
        canonical_query = "&".join(f"{_quote(k)}={_quote(v)}" for k, v in sorted(query.items()))
        canonical = "\n".join([method, path, canonical_query, canonical_headers, ";".join(signed), payload_hash])
        scope = f"{day}/{self.region}/s3/aws4_request"
        to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
        key = ("AWS4" + self._secret_key).encode()
        for part in (day, self.region, "s3", "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        headers["authorization"] = (f"AWS4-HMAC-SHA256 Credential={self._access_key}/{scope}, "
                                    f"SignedHeaders={';'.join(signed)}, Signature={signature}")

    def request(self, method: str, bucket: str, key: str = "", *, query: dict[str, str] | None = None,
                headers: dict[str, str] | None = None, body: bytes = b"", ok: tuple[int, ...] = (200, 204),
                what: str = "") -> tuple[int, dict[str, str], bytes]:
        query = dict(query or {})
        headers = {k.lower(): v for k, v in (headers or {}).items()}
        path = self.base_path + "/" + _quote(bucket) + ("/" + _quote(key, safe="-_.~/") if key else "")
        if body or method == "PUT":
            headers["content-md5"] = base64.b64encode(hashlib.md5(body).digest()).decode()  # Object Lock requires it
            headers["content-length"] = str(len(body))
        self._sign(method, path, query, headers, hashlib.sha256(body).hexdigest())
        target = path + ("?" + "&".join(f"{_quote(k)}={_quote(v)}" for k, v in sorted(query.items())) if query else "")
        where = f"{what or method} s3://{bucket}/{key}"
        for attempt in (1, 2):  # a kept-alive connection the server closed meanwhile: once more, on a new one
            conn = self._conn(fresh=attempt == 2)
            try:
                conn.request(method, target, body=body or None, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as e:
                if attempt == 2:
                    raise S3Error(f"{where}: the store at {self.endpoint} closed the connection ({e})") from None
            except OSError as e:
                conn.close()
                self._local.conn = None
                raise S3Error(f"{where}: cannot reach the store at {self.endpoint} ({e})") from None
        rheaders = {k.lower(): v for k, v in resp.getheaders()}
        if resp.status not in ok:
            code, message = "", ""
            if data.strip().startswith(b"<"):
                try:
                    root = _strip_ns(ET.fromstring(data))
                    code, message = _text(root, "Code"), _text(root, "Message")
                except ET.ParseError:
                    pass
            raise S3Error(f"{where}: the store answered {resp.status} {code or resp.reason}"
                          + (f": {message}" if message else ""), resp.status, code or resp.reason)
        return resp.status, rheaders, data

    # -- buckets -------------------------------------------------------------------------------
    def create_bucket(self, bucket: str, object_lock: bool = True) -> None:
        headers = {"x-amz-bucket-object-lock-enabled": "true"} if object_lock else {}
        body = b""
        if self.region and self.region != "us-east-1":
            body = (f'<CreateBucketConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><LocationConstraint>'
                    f"{self.region}</LocationConstraint></CreateBucketConfiguration>").encode()
        self.request("PUT", bucket, headers=headers, body=body, what="CreateBucket")

    def object_lock_enabled(self, bucket: str) -> bool:
        try:
            _, _, data = self.request("GET", bucket, query={"object-lock": ""}, what="GetObjectLockConfiguration")
        except S3Error as e:
            if e.status == 404 and e.code != "NoSuchBucket":
                return False
            raise
        return _text(_strip_ns(ET.fromstring(data)), "ObjectLockEnabled") == "Enabled"

    # -- objects -------------------------------------------------------------------------------
    def put(self, bucket: str, key: str, data: bytes, *, if_none_match: bool = False, if_match: str | None = None,
            retention: tuple[str, dt.datetime] | None = None, content_type: str = "application/octet-stream") -> Put:
        headers = {"content-type": content_type}
        if if_none_match:
            headers["if-none-match"] = "*"
        if if_match:
            headers["if-match"] = if_match if if_match.startswith('"') else f'"{if_match}"'  # an ETag is quoted
        if retention:
            headers["x-amz-object-lock-mode"] = retention[0].upper()
            headers["x-amz-object-lock-retain-until-date"] = iso_z(retention[1])
        _, h, _ = self.request("PUT", bucket, key, headers=headers, body=data, what="PutObject")
        return Put(h.get("etag", "").strip('"'), h.get("x-amz-version-id"))

    def get(self, bucket: str, key: str, version_id: str | None = None) -> bytes:
        return self.get_with_headers(bucket, key, version_id)[1]

    def get_with_headers(self, bucket: str, key: str, version_id: str | None = None) -> tuple[dict[str, str], bytes]:
        query = {"versionId": version_id} if version_id else {}
        _, h, data = self.request("GET", bucket, key, query=query, what="GetObject")
        return h, data

    def delete(self, bucket: str, key: str, version_id: str | None = None, *, bypass_governance: bool = False,
               if_match: str | None = None) -> None:
        headers = {}
        if bypass_governance:
            headers["x-amz-bypass-governance-retention"] = "true"
        if if_match:
            headers["if-match"] = if_match
        self.request("DELETE", bucket, key, query={"versionId": version_id} if version_id else {}, headers=headers,
                     what="DeleteObject")

    def retention(self, bucket: str, key: str, version_id: str | None = None) -> tuple[str, str] | None:
        """(mode, retain-until) of an object version, or None when it has no retention."""
        query = {"retention": ""} | ({"versionId": version_id} if version_id else {})
        try:
            _, _, data = self.request("GET", bucket, key, query=query, what="GetObjectRetention")
        except S3Error as e:
            if e.code in ("NoSuchObjectLockConfiguration", "InvalidRequest") or (e.status == 404 and e.code not in ("NoSuchKey", "NoSuchVersion")):
                return None
            raise
        root = _strip_ns(ET.fromstring(data))
        return _text(root, "Mode"), _text(root, "RetainUntilDate")

    def list(self, bucket: str, prefix: str = "", start_after: str | None = None) -> Iterator[tuple[str, str, int]]:
        """(key, etag, size) of every current object under ``prefix``, in key order."""
        query = {"list-type": "2", "prefix": prefix}
        if start_after:
            query["start-after"] = start_after
        while True:
            _, _, data = self.request("GET", bucket, query=query, what="ListObjectsV2")
            root = _strip_ns(ET.fromstring(data))
            for c in root.findall("Contents"):
                yield _text(c, "Key"), _text(c, "ETag").strip('"'), int(_text(c, "Size", "0"))
            token = _text(root, "NextContinuationToken")
            if _text(root, "IsTruncated") != "true" or not token:
                return
            query = {"list-type": "2", "prefix": prefix, "continuation-token": token}

    def versions(self, bucket: str, prefix: str = "", key_marker: str | None = None) -> Iterator[Version]:
        """Every version and delete marker under ``prefix`` (of keys after ``key_marker``): keys in
        order, each key's newest first."""
        query = {"versions": "", "prefix": prefix}
        if key_marker:
            query["key-marker"] = key_marker
        while True:
            _, _, data = self.request("GET", bucket, query=query, what="ListObjectVersions")
            root = _strip_ns(ET.fromstring(data))
            for el in root:
                if el.tag in ("Version", "DeleteMarker"):
                    yield Version(_text(el, "Key"), _text(el, "VersionId"), _text(el, "IsLatest") == "true",
                                  el.tag == "DeleteMarker", _text(el, "ETag").strip('"'), int(_text(el, "Size", "0")),
                                  _text(el, "LastModified"))
            if _text(root, "IsTruncated") != "true":
                return
            query = {"versions": "", "prefix": prefix, "key-marker": _text(root, "NextKeyMarker")}
            if _text(root, "NextVersionIdMarker"):
                query["version-id-marker"] = _text(root, "NextVersionIdMarker")
