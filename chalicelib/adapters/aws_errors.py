"""What AWS said when a call failed, read the same way by every adapter."""

from __future__ import annotations


def error_code(exc: BaseException) -> str:
    """The error code of a botocore ClientError (e.g. "ConditionalCheckFailedException"); "" otherwise."""
    from botocore.exceptions import ClientError

    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def error_message(exc: BaseException) -> str:
    """AWS's message of a botocore ClientError; otherwise (or when it is empty) the exception's text."""
    from botocore.exceptions import ClientError

    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Message", "")) or str(exc)
    return str(exc)
