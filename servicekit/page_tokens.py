"""Opaque page tokens for keyset paging.

A token carries the last id of the page it follows, the total counted on the first
page (so that later pages need not count again) and a fingerprint of the query it
belongs to, sealed by a checksum. It is not a secret: every filter (and every access
rule) is taken from the request again on each page, so a forged token can reveal
nothing the caller could not list anyway. The checksum and fingerprint only make a
tampered token, or one from another query, fail loudly with INVALID_ARGUMENT instead
of silently returning a wrong page.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from typing import NamedTuple

from servicekit.errors import InvalidField

_LAYOUT = struct.Struct(">QI8s8s")  # after_id, total, query fingerprint, checksum
_CONTEXT = b"page-token-v2"
# The checksum is unkeyed, so a forged token may say more than was ever issued.
MAX_ID = 2**63 - 1  # ids are signed 64-bit
MAX_TOTAL = 2**31 - 1  # total_size is an int32 in every reply


class PagePosition(NamedTuple):
    after_id: int
    # How many matched when the first page was read (0 for a list that counts nothing).
    total: int = 0


def query_fingerprint(*parts: object) -> bytes:
    """A short digest of everything that defines a query except its page size and token."""
    return hashlib.sha256(repr(parts).encode()).digest()[:8]


def _checksum(position: PagePosition, fingerprint: bytes) -> bytes:
    sealed = _CONTEXT + position.after_id.to_bytes(8, "big") + position.total.to_bytes(4, "big") + fingerprint
    return hashlib.sha256(sealed).digest()[:8]


def encode_page_token(position: PagePosition, fingerprint: bytes) -> str:
    raw = _LAYOUT.pack(position.after_id, position.total, fingerprint, _checksum(position, fingerprint))
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(token: str, fingerprint: bytes, field: str = "page_token") -> PagePosition:
    """Returns where the next page starts; raises InvalidField for a bad token."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        after_id, total, token_fingerprint, checksum = _LAYOUT.unpack(raw)
    except (binascii.Error, ValueError, struct.error):
        raise InvalidField(field, "is not a page token issued by this service") from None
    position = PagePosition(after_id, total)
    if checksum != _checksum(position, token_fingerprint) or after_id > MAX_ID or total > MAX_TOTAL:
        raise InvalidField(field, "is not a page token issued by this service")
    if token_fingerprint != fingerprint:
        raise InvalidField(field, "belongs to a different query: keep every other field as on the first page")
    return position
