"""What AWS said when a call failed, read the same way by every adapter."""

from __future__ import annotations

from botocore.exceptions import BotoCoreError, ClientError

# What a boto3 call raises when AWS refuses (ClientError) or cannot be reached (BotoCoreError). Adapters
# catch these, never Exception: a programming error must surface as one, not as "S3 failed".
AWS_ERRORS = (ClientError, BotoCoreError)


def error_code(exc: BaseException) -> str:
    """The error code of a botocore ClientError (e.g. "ConditionalCheckFailedException"); "" otherwise."""
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def error_message(exc: BaseException) -> str:
    """AWS's message of a botocore ClientError; otherwise (or when it is empty) the exception's text."""
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Message", "")) or str(exc)
    return str(exc)


def http_status(exc: BaseException) -> int | None:
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return int(status) if status is not None else None
    return None
