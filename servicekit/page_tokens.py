"""Opaque page tokens for keyset paging.

A token carries the last id of the page it follows and a fingerprint of the query it
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

from servicekit.errors import InvalidField

_LAYOUT = struct.Struct(">Q8s8s")  # after_id, query fingerprint, checksum
_CONTEXT = b"page-token-v1"


def query_fingerprint(*parts: object) -> bytes:
    """A short digest of everything that defines a query except its page size and token."""
    return hashlib.sha256(repr(parts).encode()).digest()[:8]


def _checksum(after_id: int, fingerprint: bytes) -> bytes:
    return hashlib.sha256(_CONTEXT + after_id.to_bytes(8, "big") + fingerprint).digest()[:8]


def encode_page_token(after_id: int, fingerprint: bytes) -> str:
    raw = _LAYOUT.pack(after_id, fingerprint, _checksum(after_id, fingerprint))
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(token: str, fingerprint: bytes, field: str = "page_token") -> int:
    """Returns the id after which the next page starts; raises InvalidField for a bad token."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        after_id, token_fingerprint, checksum = _LAYOUT.unpack(raw)
    except (binascii.Error, ValueError, struct.error):
        raise InvalidField(field, "is not a page token issued by this service") from None
    if checksum != _checksum(after_id, token_fingerprint):
        raise InvalidField(field, "is not a page token issued by this service")
    if token_fingerprint != fingerprint:
        raise InvalidField(field, "belongs to a different query: keep every other field as on the first page")
    return after_id
