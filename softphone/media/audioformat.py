"""The audio format of every call: 48 kHz mono in 20 ms frames.

Apart from :mod:`softphone.media.audio` (which re-exports them) so that what
needs only the numbers, such as listing the sound devices
(:mod:`softphone.media.sounddev`), does not load numpy.
"""

from __future__ import annotations

from typing import Final

SAMPLE_RATE: Final = 48_000
FRAME_MS: Final = 20
FRAME_SAMPLES: Final = SAMPLE_RATE * FRAME_MS // 1000  # 960
