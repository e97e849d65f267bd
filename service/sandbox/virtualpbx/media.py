"""Voicemail audio for the standin: a valid, silent MP3 built in code (no files, no downloads)."""

from __future__ import annotations

# Header FF FB 10 C4 = frame sync, MPEG-1, Layer III, no CRC | bitrate index 1 (32 kbit/s), 44.1 kHz,
# no padding | mono, original. All-zero side info and main data decode as silence.
_FRAME_HEADER = bytes([0xFF, 0xFB, 0x10, 0xC4])
_BITRATE = 32_000
_SAMPLE_RATE = 44_100
_SAMPLES_PER_FRAME = 1152
FRAME_BYTES = 144 * _BITRATE // _SAMPLE_RATE  # 104 bytes per unpadded frame
FRAME_MS = _SAMPLES_PER_FRAME * 1000 / _SAMPLE_RATE  # ~26.1 ms


def silent_mp3(duration_ms: int) -> bytes:
    """A silent MP3 (44.1 kHz mono, 32 kbit/s) of about ``duration_ms`` milliseconds."""
    frames = max(1, round(duration_ms / FRAME_MS))
    frame = _FRAME_HEADER + bytes(FRAME_BYTES - len(_FRAME_HEADER))
    return frame * frames
