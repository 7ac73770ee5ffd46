"""The AD source's pure parts: the DirSync control's BER, objectGUID text, entry decoding and
the index that turns DirSync results (partial attribute sets) into whole objects."""

from __future__ import annotations

import uuid

from pyasn1.codec.ber import encoder  # type: ignore[import-untyped]

from services.ingest.sources.ad import (
    AdIndex,
    DirSyncRequest,
    DirSyncResponse,
    _DirSyncValue,
    decode_entry,
    guid_text,
)

NAMES = ("sAMAccountName", "givenName")


def _guid(n: int) -> bytes:
    return uuid.UUID(int=n).bytes_le


def _entry(dn: str, n: int, *classes: bytes, **attrs: list[bytes]) -> dict[str, list[bytes]]:
    out = {"objectGUID": [_guid(n)], **attrs}
    if classes:
        out["objectClass"] = list(classes)
    return out


def test_dirsync_request_is_the_documented_ber_sequence() -> None:
    # SEQUENCE { INTEGER flags, INTEGER maxBytes, OCTET STRING cookie }
    encoded = DirSyncRequest(b"\x01\x02", flags=0x800, max_bytes=1024).encodeControlValue()
    assert encoded == bytes.fromhex("300c" "02020800" "02020400" "04020102")
    assert DirSyncRequest().encodeControlValue() == bytes.fromhex("300a" "020100" "0203100000" "0400")


def test_dirsync_response_gives_more_results_and_the_cookie() -> None:
    value = _DirSyncValue()
    value["flags"], value["maxBytes"], value["cookie"] = 1, 0, b"cookie-bytes"
    response = DirSyncResponse(encodedControlValue=encoder.encode(value))
    assert response.more is True and response.cookie == b"cookie-bytes"
    value["flags"] = 0
    assert DirSyncResponse(encodedControlValue=encoder.encode(value)).more is False


def test_object_guid_is_written_as_ad_writes_it() -> None:
    raw = bytes.fromhex("6f1c6e0e8a6b3a4a9d3e2f9c0b1a2c3d")
    assert guid_text(raw) == "0e6e1c6f-6b8a-4a3a-9d3e-2f9c0b1a2c3d"


def test_account_disabled_bit_becomes_account_enabled_false() -> None:
    enabled = decode_entry("CN=a,DC=x", _entry("CN=a", 1, b"user", userAccountControl=[b"512"]), NAMES)
    disabled = decode_entry("CN=a,DC=x", _entry("CN=a", 1, b"user", userAccountControl=[b"514"]), NAMES)
    assert enabled.attributes["accountEnabled"] is True and disabled.attributes["accountEnabled"] is False
    assert disabled.attributes["userAccountControl"] == 514 and disabled.object_type == "user"


def test_index_keeps_whole_objects_across_partial_changes_renames_and_deletes() -> None:
    index = AdIndex()
    ada = decode_entry("CN=ada,DC=x", _entry("", 1, b"user", givenName=[b"Ada"], sAMAccountName=[b"ada"]),
                       NAMES)
    staff = decode_entry("CN=staff,DC=x", _entry("", 2, b"group", member=[b"CN=ada,DC=x"]), NAMES)
    assert index.apply(ada) == [("upsert", "user", ada.guid)]
    assert index.apply(staff) == [("upsert", "group", staff.guid), ("upsert", "user", ada.guid)]
    # DirSync sends only what changed (no objectClass): the index keeps the rest.
    partial = decode_entry("CN=ada,DC=x", _entry("", 1, givenName=[b"Ada2"]), NAMES)
    assert index.apply(partial) == [("upsert", "user", ada.guid)]
    user = index.object("user", ada.guid)
    assert user is not None and user.attributes["sAMAccountName"] == "ada"
    assert user.attributes["givenName"] == "Ada2" and user.memberships == (staff.guid,)
    # A rename keeps the memberships (the group lists the old DN until AD rewrites it).
    index.apply(decode_entry("CN=ada2,DC=x", _entry("", 1), NAMES))
    assert index.object("user", ada.guid).memberships == (staff.guid,)  # type: ignore[union-attr]
    rewritten = decode_entry("CN=staff,DC=x", _entry("", 2, member=[b"CN=ada2,DC=x"]), NAMES)
    assert index.apply(rewritten) == [("upsert", "group", staff.guid)]  # nobody joined or left
    tombstone = decode_entry("CN=ada2\\0ADEL:x,CN=Deleted Objects,DC=x",
                             _entry("", 1, b"user", isDeleted=[b"TRUE"]), NAMES)
    assert index.apply(tombstone) == [("delete", "user", ada.guid), ("upsert", "group", staff.guid)]
    assert index.object("group", staff.guid).members == ()  # type: ignore[union-attr]


def test_unknown_tombstones_are_deletes_only_while_catching_up() -> None:
    index = AdIndex()
    tombstone = decode_entry("CN=x,DC=x", _entry("", 9, b"user", isDeleted=[b"TRUE"]), NAMES)
    container = decode_entry("CN=Deleted Objects,DC=x", _entry("", 10, b"container", isDeleted=[b"TRUE"]),
                             NAMES)
    assert index.apply(tombstone) == []
    index.blind = True
    assert index.apply(tombstone) == [("delete", "user", tombstone.guid)]
    assert index.apply(container) == []
