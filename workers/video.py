"""Encapsulated video (MPEG-2, MPEG-4 AVC/H.264, HEVC; PS3.5 8.2.5-8.2.8) through PyAV/FFmpeg.

All fragments of the Pixel Data form one elementary stream; FFmpeg detects the container, with a raw
format hint by transfer syntax as fallback.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass

import av
import numpy as np

from workers.errors import DecodeError

_VIDEO_FORMAT_HINT = {
    "1.2.840.10008.1.2.4.100": "mpegvideo",
    "1.2.840.10008.1.2.4.101": "mpegvideo",
    "1.2.840.10008.1.2.4.107": "hevc",
    "1.2.840.10008.1.2.4.108": "hevc",
}


@dataclass(frozen=True)
class VideoInfo:
    """What demuxing (no decoding) tells about an encapsulated video stream."""

    n_frames: int
    width: int
    height: int
    codec: str
    fps: float | None


def _open_video(data: bytes, tsyntax: str) -> av.container.InputContainer:
    hint = _VIDEO_FORMAT_HINT.get(tsyntax.removesuffix(".1"), "h264")
    try:
        container = av.open(io.BytesIO(data), mode="r")
        if container.streams.video:
            return container
        container.close()
    except av.error.FFmpegError:
        pass
    return av.open(io.BytesIO(data), mode="r", format=hint)


def probe_video(data: bytes, tsyntax: str, uid: str) -> VideoInfo:
    """Count the frames of an encapsulated video by demuxing it (one packet per coded picture)."""
    try:
        with _open_video(data, tsyntax) as container:
            if not container.streams.video:
                raise DecodeError(f"{uid}: encapsulated video holds no video stream")
            stream = container.streams.video[0]
            n = sum(1 for packet in container.demux(stream) if packet.size)
            ctx = stream.codec_context
            rate = stream.average_rate or stream.guessed_rate
            fps = float(rate) if rate and 1 <= float(rate) <= 1000 else None
            info = VideoInfo(n, int(ctx.width), int(ctx.height), str(ctx.name), fps)
    except av.error.FFmpegError as exc:
        raise DecodeError(f"{uid}: encapsulated video cannot be read ({exc})") from exc
    if info.n_frames == 0:
        raise DecodeError(f"{uid}: encapsulated video holds no frames")
    return info


def iter_video_frames(
    data: bytes, tsyntax: str, wanted: list[int] | None
) -> Iterator[tuple[int, np.ndarray]]:
    """Decode the stream in order, yielding ``(index, (h, w, 3) uint8 RGB)`` for ``wanted`` or all frames.

    Stops after the last wanted frame; FFmpeg errors propagate as ``av.error.FFmpegError``.
    """
    want = set(wanted) if wanted is not None else None
    last = max(want) if want else None
    with _open_video(data, tsyntax) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for i, frame in enumerate(container.decode(stream)):
            if want is None or i in want:
                yield i, frame.to_ndarray(format="rgb24")
            if last is not None and i >= last:
                return
