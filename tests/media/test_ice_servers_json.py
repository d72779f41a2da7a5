"""The hub's ICE server list -> aiortc's objects (softphone.media.rtc): a URL aiortc
cannot take (it fails the whole call with 'malformed uri') is left out, said once."""

from __future__ import annotations

import logging

import pytest

from softphone.media.rtc import ice_servers_from_json


def test_a_malformed_url_from_the_hub_is_left_out_and_the_rest_kept(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "softphone.media.rtc")
    servers = ice_servers_from_json([
        {"urls": ["stun:", "stun:stun.example.org:3478"]},
        {"urls": "turn:x:99999", "username": "u", "credential": "p"},
        {"urls": ["turn:turn.example.org?transport=tcp"], "username": "u", "credential": "p"},
        {"urls": ["http://not-ice"]},
        {"url": "stuns:[::1]:5349"},  # (aiortc takes no IPv6 address)
        {"urls": 7},
    ])
    assert [(s.urls, s.username, s.credential) for s in servers] == [
        (["stun:stun.example.org:3478"], None, None),
        (["turn:turn.example.org?transport=tcp"], "u", "p"),
    ]
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 4 and all(m.startswith("ignoring an ICE server: ") for m in said), said
