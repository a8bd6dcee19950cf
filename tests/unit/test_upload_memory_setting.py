"""settings.upload_memory_mib must hold two first parts (one read while one is sent): otherwise a clear error that
says what to set. Growing parts are capped at half of it (chalicelib.adapters.s3_multipart.part_size_within)."""

from __future__ import annotations

import pytest

from chalicelib.config import parse_config
from chalicelib.errors import ConfigError


def settings(**fields: int) -> dict[str, object]:
    return {"settings": {"bucket": "acme-pg-backups", **fields}, "targets": []}


@pytest.mark.parametrize(("part", "memory"), [(64, 64), (64, 127), (512, 1000)])
def test_upload_memory_below_two_parts_is_refused_with_what_to_set(part: int, memory: int) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(settings(part_size_mib=part, upload_memory_mib=memory))
    message = str(info.value)
    assert f"upload_memory_mib to at least {2 * part}" in message
    assert f"part_size_mib to at most {memory // 2}" in message


@pytest.mark.parametrize(("part", "memory"), [(8, 64), (32, 64), (6, 16), (512, 1024)])
def test_upload_memory_of_two_parts_or_more_is_accepted(part: int, memory: int) -> None:
    cfg = parse_config(settings(part_size_mib=part, upload_memory_mib=memory))
    assert (cfg.settings.part_size_mib, cfg.settings.upload_memory_mib) == (part, memory)
