"""Memory that holds its bound: peak RSS of a process streaming hard-to-compress bytes into a slow S3 with the
default settings (56 MiB budget, 8 MiB parts, 4 senders).

The upload runs in a child process (its own peak RSS, VmHWM: nothing of pytest's; ru_maxrss would not do, Linux
keeps it across fork and exec), against SeaweedFS, with every UploadPart held back by a before-send handler so the
budget fills and the reader has to wait. The stream hands out random bytes through `readinto`, as pg_dump's stdout
pipe does. Measured (2026-11-30, then a 64 MiB budget): the child grows by the budget (+64 MiB over its ~63 MiB
after imports, 128 MiB peak); before part buffers were pooled and reused, the same run (300 MB, through `read`)
grew by ~75 MiB (a fresh 8 MiB bytes object per part fragments glibc's heap), 137 MiB peak.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.reliability.support import SeaweedFS

MiB = 1024 * 1024
LIMIT = 150 * 1000 * 1000  # the bound for the whole backup process, in bytes
STREAM_MIB = 160  # 20 parts: the budget fills twice over

CHILD = """
import json, os, sys, time
from chalicelib import wiring
from chalicelib.adapters.s3 import MiB, PartPlan, S3Store
from chalicelib.config import Settings

class RandomPipe:
    '''Hard-to-compress bytes, read like a pipe: readinto fills the caller's buffer, nothing else is allocated.'''

    block = os.urandom(MiB + 7)

    def __init__(self, size: int) -> None:
        self.left = size

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        n = min(len(view), self.left, len(self.block))
        view[:n] = self.block[:n]
        self.left -= n
        return n

    def read(self, size: int = -1) -> bytes:
        raise AssertionError("put_stream reads with readinto")

def high_water_mark() -> int:
    '''Peak RSS of this process (VmHWM). Not ru_maxrss: Linux keeps that across fork and exec, so a child of a big
    pytest process would start at its parent's peak.'''
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/self/status")

bucket, mib, delay = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = Settings(bucket=bucket)
client = wiring.client("s3")
client.meta.events.register("before-send.s3.UploadPart", lambda **_: time.sleep(delay))  # a slow S3
store = S3Store(
    client, bucket, plan=PartPlan(base=s.part_size_mib * MiB), concurrency=s.upload_concurrency,
    memory_budget=s.upload_memory_mib * MiB,
)
store.put_bytes("warm-up", b"x")  # connections and botocore's lazy loading, before the baseline
before = high_water_mark()
result = store.put_stream("random", RandomPipe(mib * MiB))
peak = high_water_mark()
print(json.dumps({"before": before, "peak": peak, "size": result.size, "budget": store.memory_budget,
                  "part": store.plan.size(1)}))
"""


def test_peak_rss_of_a_stream_upload_to_a_slow_s3_stays_within_the_bound(seaweed: SeaweedFS) -> None:
    bucket = seaweed.new_bucket()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_S3": seaweed.endpoint,
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    try:
        done = subprocess.run(
            [sys.executable, "-c", CHILD, bucket, str(STREAM_MIB), "0.2"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    finally:
        seaweed.drop_bucket(bucket)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["size"] == STREAM_MIB * MiB and seen["budget"] == 56 * MiB and seen["part"] == 8 * MiB
    growth = seen["peak"] - seen["before"]
    # The upload's own memory: the budget of part buffers, and little else (botocore makes no copy of a part).
    budget = seen["budget"] / MiB
    assert growth <= seen["budget"] + 8 * MiB, f"grew {growth / MiB:.0f} MiB while uploading, budget {budget:.0f} MiB"
    assert seen["peak"] <= LIMIT, f"peak RSS {seen['peak'] / MiB:.0f} MiB, the bound is {LIMIT / MiB:.0f} MiB: {seen}"
