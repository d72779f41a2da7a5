"""Every place where softphone relies on aiortc's or aioice's internals.

aiortc offers no public seam for these, so they are replaced here, in this
package, against the versions pinned in ``pyproject.toml``
(:mod:`.pinned`). Each module patches one part and checks, before it does,
that the internals it relies on are what it expects; :func:`check` runs all
those checks, and :func:`install` (when :mod:`softphone.media.rtc` is
imported) runs them and applies the gathering seams.
``tests/media/test_aiortc_seams.py`` fails loudly if the internals change.

- :mod:`.gathering`: ICE gathering capped at :data:`DEFAULT_GATHER_TIMEOUT`
  (aioice waited 5 s for a dead STUN server) or per peer connection
  (:func:`limit_gathering`); failed TURN allocations logged and kept
  (:func:`turn_errors`).
- :mod:`.ice_pair`: the selected candidate pair, which aiortc's getStats()
  lacks (:func:`selected_candidate_pair`).
- :mod:`.codec`: one sender's encoder (:func:`encode_with`); our Opus fmtp
  and RED in offers and answers (:func:`install_voice_codec`,
  :func:`prefer_red`, :func:`red_allowed`).
- :mod:`.receive`: audio packets taken before aiortc's jitter buffer
  (:func:`tap_receiver`); loss and delay simulated (:func:`impair_receiver`).
- :mod:`.rtcp`: the peer's reports and XR handed to the call
  (:func:`watch_reports`); our XR in the reports we send (:func:`report_with`).
- :mod:`.fast_setup` and :mod:`.dtls`: call setup time (issue 16): paced,
  triggered and quickly retransmitted ICE checks, no wait for STUN once a
  relay is there (:func:`speed_up_setup`, :class:`FastSetup`); DTLS flights
  sent again sooner, the callee as DTLS server (:func:`answer_as_dtls_server`);
  a closed connection's OpenSSL and SRTP state let go at once (issue 15,
  :func:`release_closed`).
- :mod:`.teardown`: a closed connection's reference cycles cut, so a call's
  objects are freed with it, not by the cyclic collector (:func:`unlink_closed`).
- :mod:`.certificate`: a call's connections share its first DTLS certificate,
  so a media restart keeps the verification code (:func:`certificate_of`,
  :func:`use_certificate`).

Tests that patch a seam's internals patch the module that uses them (for
example ``fast_setup._original_transaction_init``), not this package.
"""

from __future__ import annotations

from softphone.media.aiortc_seams import (
    certificate,
    codec,
    fast_setup,
    gathering,
    ice_pair,
    receive,
    rtcp,
    teardown,
)
from softphone.media.aiortc_seams.certificate import certificate_of, use_certificate
from softphone.media.aiortc_seams.codec import (
    RED_PAYLOAD_TYPE,
    EncoderFactory,
    encode_with,
    install_voice_codec,
    prefer_red,
    red_allowed,
)
from softphone.media.aiortc_seams.dtls import (
    DTLS_TIMER_MAX,
    answer_as_dtls_server,
    release_closed,
)
from softphone.media.aiortc_seams.fast_setup import (
    STOCK_SETUP,
    FastSetup,
    speed_up_ice,
    speed_up_setup,
)
from softphone.media.aiortc_seams.gathering import (
    DEFAULT_GATHER_TIMEOUT,
    describe_turn_error,
    limit_gathering,
    turn_errors,
)
from softphone.media.aiortc_seams.ice_pair import selected_candidate_pair
from softphone.media.aiortc_seams.pinned import (
    AIOICE_VERSION,
    AIORTC_VERSION,
    SeamMismatch,
    check_versions,
)
from softphone.media.aiortc_seams.receive import PacketHandler, impair_receiver, tap_receiver
from softphone.media.aiortc_seams.rtcp import ReportHandler, XrHandler, report_with, watch_reports
from softphone.media.aiortc_seams.teardown import unlink_closed

__all__ = [
    "AIOICE_VERSION",
    "AIORTC_VERSION",
    "DEFAULT_GATHER_TIMEOUT",
    "DTLS_TIMER_MAX",
    "RED_PAYLOAD_TYPE",
    "STOCK_SETUP",
    "EncoderFactory",
    "FastSetup",
    "PacketHandler",
    "ReportHandler",
    "SeamMismatch",
    "XrHandler",
    "answer_as_dtls_server",
    "certificate_of",
    "check",
    "describe_turn_error",
    "encode_with",
    "impair_receiver",
    "install",
    "install_voice_codec",
    "limit_gathering",
    "prefer_red",
    "red_allowed",
    "release_closed",
    "report_with",
    "selected_candidate_pair",
    "speed_up_ice",
    "speed_up_setup",
    "tap_receiver",
    "turn_errors",
    "unlink_closed",
    "use_certificate",
    "watch_reports",
]


def check() -> None:
    """Raise :class:`SeamMismatch` if the internals any seam relies on are not as expected."""
    check_versions()
    gathering.check_internals()
    ice_pair.check_internals()
    codec.checked()
    receive.check_internals()
    rtcp.check_internals()
    fast_setup.checked()  # and the DTLS half's
    certificate.check_internals()
    teardown.check_internals()


def install() -> None:
    """Check every seam, and apply the gathering seams (idempotent).

    Called when :mod:`softphone.media.rtc` is imported; the other seams are
    applied per call (or, for :func:`install_voice_codec`, once when needed).
    """
    if gathering.installed():
        return
    check()
    gathering.install_gathering()
