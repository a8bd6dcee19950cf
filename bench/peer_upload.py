"""`aws s3 cp - s3://BUCKET/KEY --sse AES256` when the aws CLI is not installed: the script users write.

    pg_dump ... | python -m bench.peer_upload BUCKET KEY

boto3's `upload_fileobj` from stdin with s3transfer's defaults (8 MiB parts, 10 threads), which are the
aws CLI's; the endpoint and CA come from the environment (AWS_ENDPOINT_URL_S3, AWS_CA_BUNDLE) as for it.
"""

from __future__ import annotations

import sys

import boto3


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m bench.peer_upload BUCKET KEY  (the dump on stdin)", file=sys.stderr)
        return 2
    bucket, key = argv
    boto3.client("s3").upload_fileobj(sys.stdin.buffer, bucket, key, ExtraArgs={"ServerSideEncryption": "AES256"})
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
