from __future__ import annotations

import pytest

from servicekit.errors import InvalidField
from servicekit.page_tokens import PagePosition, decode_page_token, encode_page_token, query_fingerprint


def test_a_token_brings_back_its_position_for_the_same_query():
    fingerprint = query_fingerprint("items", "category=tools")

    token = encode_page_token(PagePosition(4711, total=9000), fingerprint)

    assert decode_page_token(token, fingerprint) == PagePosition(4711, total=9000)


def test_a_token_of_another_query_is_refused():
    token = encode_page_token(PagePosition(10), query_fingerprint("items", "category=tools"))

    with pytest.raises(InvalidField, match="different query"):
        decode_page_token(token, query_fingerprint("items", "category=toys"))


@pytest.mark.parametrize("position", range(0, 37, 3))
def test_a_token_with_any_changed_character_is_refused(position):
    fingerprint = query_fingerprint("items")
    token = encode_page_token(PagePosition(123, total=500), fingerprint)
    changed = token[:position] + ("A" if token[position] != "A" else "B") + token[position + 1 :]

    with pytest.raises(InvalidField) as raised:
        decode_page_token(changed, fingerprint)
    assert raised.value.field == "page_token"


@pytest.mark.parametrize("token", ["x", "!!!!", "AAAA", "é"])
def test_garbage_is_refused(token):
    with pytest.raises(InvalidField):
        decode_page_token(token, query_fingerprint("items"))


def test_a_forged_token_past_the_largest_id_is_refused():
    # The checksum is unkeyed, so anyone can seal a token; ids past int64 must not reach SQL.
    fingerprint = query_fingerprint("items")
    forged = encode_page_token(PagePosition(2**64 - 1), fingerprint)

    with pytest.raises(InvalidField) as raised:
        decode_page_token(forged, fingerprint)
    assert raised.value.field == "page_token"
