"""Video decode (any FFmpeg-readable file) to square uint8 frames, and AVI encode, with PyAV.

Decoding never trusts container headers for duration or frame count: it reads packets until the
end, skips packets the decoder rejects (counted), applies display-matrix rotation, and optionally
resamples to a fixed frame rate by timestamps.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import av
import av.logging
import av.video.reformatter
import numpy as np

from components.io import atomic_open

# FFmpeg prints decoder complaints for every damaged packet; we count and report them instead.
av.logging.set_level(av.logging.PANIC)


class VideoDecodeError(Exception):
    """The file cannot be used as a video; the message is the reason shown in reports."""


@dataclass
class DecodedVideo:
    frames: np.ndarray                      # [T, S, S, 3] uint8 RGB
    fps: float                              # frame rate of `frames` (native average or resampled)
    source_width: int
    source_height: int
    rotation: int                           # degrees applied (counter-clockwise)
    codec: str
    container_format: str
    bad_packets: int = 0
    notes: list[str] = field(default_factory=list)


def scaled_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(w, h) after resizing the shorter side to `size`, keeping the aspect ratio."""
    if width <= height:
        return size, max(size, round(height * size / width))
    return max(size, round(width * size / height)), size


def center_crop(img: np.ndarray, size: int) -> np.ndarray:
    h, w = img.shape[:2]
    top, left = (h - size) // 2, (w - size) // 2
    return img[top:top + size, left:left + size]


def resize_shorter_and_crop(frame: av.VideoFrame, size: int,
                            reformatter: av.video.reformatter.VideoReformatter | None = None) -> np.ndarray:
    """Area-averaging (antialiased) resize of the shorter side to `size`, then a centre crop.

    Scaling and the YUV->RGB conversion happen in one swscale pass, as `ffmpeg -vf scale` does.
    Pass one `reformatter` for all frames of a video: it keeps the scaler context, which
    `frame.reformat` rebuilds on every call (2.5-3x slower).
    """
    w, h = scaled_size(frame.width, frame.height, size)
    fmt = reformatter or av.video.reformatter.VideoReformatter()
    rgb = fmt.reformat(frame, width=w, height=h, format="rgb24", interpolation="AREA").to_ndarray()
    return center_crop(rgb, size)


def _select_video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream:
    streams = [s for s in container.streams.video if s.codec_context is not None]
    if not streams:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        raise VideoDecodeError(f"no video stream (streams: {', '.join(kinds)})")
    # FFmpeg's notion of the main stream (what `ffmpeg -i` maps by default), not just index 0.
    best = container.streams.best("video")
    return best if best is not None else streams[0]


# Any FFmpeg error raised while decoding one packet means that packet is damaged: skip it, keep the rest.
# (PyAV 18 maps FFmpeg's codes onto FFmpegError subclasses; naming the base catches every one of them.)
PACKET_DECODE_ERRORS = (av.error.FFmpegError,)


class VideoStream:
    """A video opened for streaming decode: iterating yields square uint8 frames [S, S, 3] one at a time.

    Memory stays at one frame (plus the decoder's own buffers) whatever the length of the video; after
    the iteration, `bad_packets`, `notes`, `rotation` and the source size describe what was read.
    fps=None keeps the native frames; a number resamples by presentation timestamps (the frame shown
    at each tick t0 + k/fps). Opening raises VideoDecodeError for a file that is not a usable video;
    iterating raises it when no frame decodes.
    """

    def __init__(self, path: str | os.PathLike, size: int, fps: float | None = None, threads: int = 1,
                 max_frames: int | None = None):
        path = Path(path)
        if path.stat().st_size == 0:
            raise VideoDecodeError("empty file (0 bytes)")
        try:
            self.container = av.open(str(path), metadata_errors="ignore")
        except (av.error.FFmpegError, UnicodeDecodeError) as exc:
            # strerror, not str(exc): the latter embeds the absolute path, which would make reports machine-dependent.
            detail = getattr(exc, "strerror", None) or type(exc).__name__
            raise VideoDecodeError(f"not a readable media file ({detail})") from None
        try:
            self.stream = _select_video_stream(self.container)
        except BaseException:
            self.container.close()
            raise
        self.stream.thread_type = "AUTO" if threads != 1 else "SLICE"
        self.stream.thread_count = threads
        rate = self.stream.average_rate or self.stream.guessed_rate or self.stream.base_rate
        self.native_fps = float(rate) if rate else 25.0
        self.fps = float(fps) if fps is not None else self.native_fps  # rate of the yielded frames
        self.size, self.resample, self.max_frames = size, fps is not None, max_frames
        self.codec = self.stream.codec_context.name
        self.container_format = self.container.format.name
        self.bad_packets = 0
        self.rotation = self.source_width = self.source_height = 0
        self.notes: list[str] = []
        self.decoded = 0  # frames decoded (before resampling)

    def __enter__(self) -> "VideoStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.container.close()

    def _decoded_frames(self) -> Iterator[tuple[np.ndarray, float | None]]:
        """(frame, presentation time) in presentation order; damaged packets skipped and counted."""
        reformatter = av.video.reformatter.VideoReformatter()
        try:
            for packet in self.container.demux(self.stream):
                try:
                    decoded = packet.decode()
                except PACKET_DECODE_ERRORS:
                    self.bad_packets += 1
                    continue
                for frame in decoded:
                    img = resize_shorter_and_crop(frame, self.size, reformatter)
                    rot = int(round((frame.rotation or 0) / 90.0)) % 4
                    if rot:
                        img = np.rot90(img, k=rot)
                    if not self.decoded:
                        self.rotation, self.source_width, self.source_height = rot * 90, frame.width, frame.height
                    self.decoded += 1
                    yield np.ascontiguousarray(img), frame.time
                if self.max_frames is not None and self.decoded >= self.max_frames:
                    break
        except av.error.FFmpegError as exc:
            # Demuxing stopped early (e.g. truncated file): keep what decoded, say so.
            self.notes.append(f"stopped reading after {self.decoded} frames: "
                              f"{getattr(exc, 'strerror', None) or exc}")

    def __iter__(self) -> Iterator[np.ndarray]:
        period = 1.0 / self.native_fps
        prev: np.ndarray | None = None
        prev_t = t0 = 0.0
        tick = 0  # next output tick (resampling)
        broken_at = None  # first frame whose timestamp was missing or not increasing
        for img, t in self._decoded_frames():
            if prev is None:
                t = float(t) if t is not None else 0.0
                t0 = t
            elif broken_at is None and t is not None and float(t) <= prev_t:
                broken_at = self.decoded - 1
            if prev is not None:
                # A missing timestamp: one nominal period on; from a non-increasing one on: decode order.
                t = prev_t + period if broken_at is not None or t is None else float(t)
                if not self.resample:
                    yield prev
                else:  # prev is the frame shown at every tick before t
                    while t0 + tick / self.fps + 1e-9 < t:
                        yield prev
                        tick += 1
            prev, prev_t = img, t
        if prev is None:
            if self.bad_packets:
                raise VideoDecodeError(f"no decodable frames ({self.bad_packets} damaged packets)")
            raise VideoDecodeError("video stream has no frames")
        if not self.resample or self.decoded == 1:
            yield prev
        else:  # the last frame is shown for one native frame period
            n_out = max(1, int(np.floor((prev_t + period - t0) * self.fps + 1e-6)))
            while tick < n_out:
                yield prev
                tick += 1
        if broken_at is not None and self.resample:
            self.notes.append(f"timestamps unusable from frame {broken_at}; resampled by decode order at the "
                              "nominal rate from there")
        if self.bad_packets:
            self.notes.append(f"{self.bad_packets} damaged packets skipped")


def decode_video(path: str | os.PathLike, size: int, fps: float | None = None,
                 threads: int = 1, max_frames: int | None = None) -> DecodedVideo:
    """Decode every frame of `path` to [T, size, size, 3] uint8 (resize shorter side + centre crop).

    Holds the whole video in memory: for long files stream with `VideoStream` instead (preprocess
    does). fps=None keeps the native frames; a number resamples by presentation timestamps. Raises
    VideoDecodeError for anything that is not a usable video.
    """
    with VideoStream(path, size, fps=fps, threads=threads, max_frames=max_frames) as video:
        stack = np.stack(list(video))
        return DecodedVideo(
            frames=stack, fps=video.fps, source_width=video.source_width, source_height=video.source_height,
            rotation=video.rotation, codec=video.codec, container_format=video.container_format,
            bad_packets=video.bad_packets, notes=video.notes,
        )


def encode_avi(path: str | os.PathLike, frames: np.ndarray, fps: int = 25,
               bit_rate: int = 800_000) -> None:
    """Write RGB frames as MPEG-4 Part 2 in AVI with the XVID FourCC (UCF-101's format), atomically.

    Single-threaded so that the same frames give the same bytes.
    """
    frames = np.asarray(frames, dtype=np.uint8)
    _, h, w, _ = frames.shape
    with atomic_open(path, "wb") as f:
        with av.open(f, mode="w", format="avi") as container:
            stream = container.add_stream("mpeg4", rate=fps)
            stream.width, stream.height = w, h
            stream.pix_fmt = "yuv420p"
            stream.bit_rate = bit_rate
            stream.codec_context.codec_tag = "XVID"
            stream.thread_count = 1
            stream.thread_type = "NONE"
            for img in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
