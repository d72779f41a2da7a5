"""The plain decision of whether a closed hub connection was a refusal or a loss."""

from __future__ import annotations

from softphone.client.hubconnection import FULL_FOR_US, RefusalWatch
from softphone.core.protocol import ErrorCode, HubError

UNAUTHORIZED = HubError(ErrorCode.UNAUTHORIZED, "bad token")
FULL_US = HubError(ErrorCode.TOO_MANY_CONNECTIONS, FULL_FOR_US)
FULL_ALL = HubError(ErrorCode.TOO_MANY_CONNECTIONS, "the hub is full")


def test_a_refusal_is_its_error_then_a_policy_close() -> None:
    watch = RefusalWatch()
    watch.error(UNAUTHORIZED)
    assert watch.closed(1008) == UNAUTHORIZED
    watch.error(UNAUTHORIZED)
    assert watch.closed(1006) is None  # (the error, then a lost connection: a loss)
    assert watch.closed(1008) is None  # (a policy close with no refusal said on it)


def test_a_hub_full_for_us_refuses_only_the_first_connection() -> None:
    watch = RefusalWatch()
    watch.error(FULL_US)
    assert watch.closed(1013) == FULL_US
    again = RefusalWatch()
    assert again.closed(1001) is None  # the first connection worked; lost later
    again.error(FULL_US)
    assert again.closed(1013) is None  # reconnecting: keep trying


def test_a_hub_full_in_total_is_never_a_refusal() -> None:
    watch = RefusalWatch()
    watch.error(FULL_ALL)
    assert watch.closed(1013) is None


def test_other_errors_are_no_refusal() -> None:
    watch = RefusalWatch()
    watch.error(HubError(ErrorCode.OFFLINE, "b is offline"))
    assert watch.closed(1008) is None
