"""The check that settings.upload_memory_mib holds two parts of part_size_mib: one part is read while one is sent
(chalicelib.adapters.s3_multipart, which caps growing parts at half the budget).

Kept apart from chalicelib.config (which imports it) so the rule lives with the uploader it protects.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, ValidationInfo


def two_parts_of_part_size(upload_memory_mib: int, info: ValidationInfo) -> int:
    """`upload_memory_mib`, or a ValueError that says what to set (part_size_mib is validated before it)."""
    part_size_mib = info.data.get("part_size_mib")
    if isinstance(part_size_mib, int) and upload_memory_mib < 2 * part_size_mib:
        raise ValueError(
            f"settings.upload_memory_mib ({upload_memory_mib}) must hold two parts of part_size_mib"
            f" ({part_size_mib}): set upload_memory_mib to at least {2 * part_size_mib}"
            f" or part_size_mib to at most {upload_memory_mib // 2}"
        )
    return upload_memory_mib


UploadMemoryMib = Annotated[int, AfterValidator(two_parts_of_part_size)]  # settings.upload_memory_mib's type
