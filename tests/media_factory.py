"""Factory for small, real media files that exercise the video preprocessing stage.

Every factory takes a target ``path`` (``pathlib.Path`` or ``str``; parent
directories are created), writes the file with PyAV only (no ``ffmpeg`` CLI),
and returns the path as a ``pathlib.Path``.

Pixel content comes from :func:`pattern_frames`, a deterministic moving
sinusoidal gradient, so tests can compare decoded frames with the source.

Conventions
-----------
* ``size`` arguments are ``(height, width)`` (numpy order), e.g. UCF-101 is
  ``(240, 320)``.
* Factories whose claim is a container force that container's muxer, so the
  file content does not depend on the extension of ``path`` (a ``.avi`` path
  given to :func:`h264_mp4` yields an MP4 named ``.avi``).
* Encoding is single threaded and codec/format ``bitexact`` flags are set, so
  the same call produces byte-identical files with the same FFmpeg build.
* ``rotation`` follows FFmpeg's display-matrix convention as PyAV reads it
  back: degrees *counter-clockwise* to apply for display.  After decoding,
  ``frame.rotation % 360 == rotation`` (PyAV normalises to [-180, 180], so
  270 reads back as -90), and ``ffprobe`` shows the same value as
  ``side_data rotation``.  (The legacy phone ``rotate=90`` tag, meaning
  "rotate 90 clockwise", corresponds to ``rotation=270`` here.)

What PyAV/FFmpeg cannot write, and what is produced instead
-----------------------------------------------------------
* Zero-frame files: MP4/MOV drop a track with no samples and Matroska writes
  a header FFmpeg cannot probe, so :func:`zero_frames` writes an AVI
  (MPEG-4 Part 2, XVID), whose header keeps the video stream with 0 frames.
* Display-matrix rotation only exists in MP4/MOV here (AVI has no such
  field), so ``rotation`` is only accepted for those muxers.
"""

from __future__ import annotations

import io
import os
from fractions import Fraction
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import av
import numpy as np

__all__ = [
    "pattern_frames",
    "write_video",
    "ucf_like_avi",
    "h264_mp4",
    "mov_file",
    "mkv_file",
    "webm_vp8",
    "h264_avi",
    "misleading_extension",
    "rotated_mp4",
    "vfr_mp4",
    "VFR_PTS_PATTERN",
    "non25_fps",
    "fps_12",
    "no_duration_stream",
    "with_audio",
    "audio_only",
    "two_video_streams",
    "qcif",
    "tiny_16",
    "portrait",
    "large_4k",
    "zero_byte",
    "random_bytes",
    "truncated",
    "one_frame",
    "zero_frames",
    "corrupt_middle",
    "DAMAGED_PACKET_FRAMES",
    "damaged_packet_index",
    "h264_damaged_nal",
    "vp9_webm_damaged_frame",
    "vp8_ogg_damaged_frame",
    "ogg_damaged_page",
    "mpeg4_avi_damaged_frame",
]

PathLike = Union[str, "os.PathLike[str]"]

# Muxer names (as accepted by ``av.open(format=...)``) keyed by extension;
# used when ``container_format`` is None.
_EXT_FORMATS = {
    ".avi": "avi",
    ".mp4": "mp4",
    ".m4v": "mp4",
    ".mov": "mov",
    ".mkv": "matroska",
    ".webm": "webm",
    ".h264": "h264",
    ".264": "h264",
    ".ts": "mpegts",
    ".wav": "wav",
}

# Audio codec used for ``audio=True`` per muxer.
_AUDIO_CODECS = {
    "avi": "pcm_s16le",
    "wav": "pcm_s16le",
    "webm": "libopus",
}
_AUDIO_RATE = 16000
_AUDIO_RATES = {"libopus": 48000}


# --------------------------------------------------------------------------
# Content
# --------------------------------------------------------------------------


def pattern_frames(n: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Deterministic moving-gradient RGB frames, ``uint8`` of shape ``[n, h, w, 3]``.

    R is a horizontal sinusoid drifting right, G a vertical one drifting
    up, B the sum of a horizontal (drifting) and a vertical sinusoid;
    phases depend on ``seed``.  The pattern is smooth so
    that lossy codecs reproduce it closely (decoded vs. source mean absolute
    error is a few levels), while consecutive frames differ visibly.
    """
    if n < 0 or height <= 0 or width <= 0:
        raise ValueError(f"bad pattern shape n={n} h={height} w={width}")
    rng = np.random.default_rng(seed)
    ph_r, ph_g, ph_bx, ph_by = rng.uniform(0.0, 2 * np.pi, size=4)
    two_pi = 2 * np.pi
    t = np.arange(n, dtype=np.float64)[:, None]
    x = np.arange(width, dtype=np.float64)[None, :] / width
    y = np.arange(height, dtype=np.float64)[None, :] / height
    # 1-D profiles only; the 2-D frames are broadcasts (cheap even at 4K).
    r = np.rint(128 + 100 * np.sin(two_pi * (x - t / 16) + ph_r)).astype(np.uint8)  # [n, w]
    g = np.rint(128 + 100 * np.sin(two_pi * (y + t / 20) + ph_g)).astype(np.uint8)  # [n, h]
    bx = np.rint(64 + 40 * np.sin(two_pi * x + t / 4 + ph_bx)).astype(np.uint8)  # [n, w]
    by = np.rint(64 + 40 * np.sin(two_pi * y + ph_by)).astype(np.uint8)  # [1, h]
    out = np.empty((n, height, width, 3), dtype=np.uint8)
    out[..., 0] = r[:, None, :]
    out[..., 1] = g[:, :, None]
    np.add(bx[:, None, :], by[:, :, None], out=out[..., 2])  # <= 208, no overflow
    return out


# --------------------------------------------------------------------------
# Writer
# --------------------------------------------------------------------------


def _prepare(path: PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _as_rate(fps) -> Fraction:
    rate = Fraction(fps).limit_denominator(1001000) if not isinstance(fps, Fraction) else fps
    if rate <= 0:
        raise ValueError(f"fps must be positive, got {fps!r}")
    return rate


def _guess_format(path: Path) -> str:
    try:
        return _EXT_FORMATS[path.suffix.lower()]
    except KeyError:
        raise ValueError(
            f"cannot guess a container from {path.name!r}; pass container_format"
        ) from None


def _configure_video(stream, width, height, codec, pix_fmt, fourcc, bit_rate, options, fmt):
    stream.width = width
    stream.height = height
    if codec == "mjpeg" and pix_fmt == "yuv420p":
        pix_fmt = "yuvj420p"  # full-range planar is what the MJPEG encoder wants
    stream.pix_fmt = pix_fmt
    cc = stream.codec_context
    cc.thread_count = 1  # deterministic, and no frame-thread reordering surprises
    cc.flags |= av.codec.context.Flags.bitexact
    if bit_rate is not None:
        stream.bit_rate = int(bit_rate)
    if fourcc is None and fmt == "avi" and codec == "mpeg4":
        fourcc = "XVID"  # what UCF-101 uses
    if fourcc is not None:
        cc.codec_tag = fourcc
    opts = {}
    if codec == "libx264":
        # x264's SIMD paths occasionally read uninitialised memory (seen as
        # run-to-run differences in the bitstream); the C paths are exact
        # and fast enough for these tiny frames.
        opts.update({"threads": "1", "x264-params": "asm=0"})
    elif codec == "libvpx":
        opts.update({"threads": "1", "deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"})
    if options:
        opts.update({str(k): str(v) for k, v in options.items()})
    if opts:
        stream.options = opts
    return stream


def _add_audio(container, fmt):
    codec = _AUDIO_CODECS.get(fmt, "aac")
    rate = _AUDIO_RATES.get(codec, _AUDIO_RATE)
    stream = container.add_stream(codec, rate=rate)
    stream.codec_context.thread_count = 1
    stream.codec_context.flags |= av.codec.context.Flags.bitexact
    try:
        stream.layout = "mono"
    except AttributeError:  # pragma: no cover - older PyAV
        stream.codec_context.layout = "mono"
    return stream


class _AudioFeeder:
    """Encodes a mono 440 Hz sine, chunk by chunk, up to a requested time."""

    def __init__(self, container, stream):
        self.container = container
        self.stream = stream
        self.rate = stream.codec_context.sample_rate
        self.frame_size = stream.codec_context.frame_size or 1024
        self.done = 0  # samples encoded
        # FFmpeg picks the first supported sample format; build frames in s16
        # and let PyAV's resampler convert (e.g. to fltp for aac/opus).

    def feed_until(self, seconds: float):
        target = int(round(seconds * self.rate))
        while self.done < target:
            n = min(self.frame_size, target - self.done)
            if n < self.frame_size and self.stream.codec_context.name != "pcm_s16le":
                n = self.frame_size  # fixed-size codecs: pad the last chunk
            t = np.arange(self.done, self.done + n, dtype=np.float64) / self.rate
            samples = np.rint(8000 * np.sin(2 * np.pi * 440.0 * t)).astype(np.int16)
            frame = av.AudioFrame.from_ndarray(samples[None, :], format="s16", layout="mono")
            frame.sample_rate = self.rate
            frame.pts = self.done
            frame.time_base = Fraction(1, self.rate)
            for packet in self.stream.encode(frame):
                self.container.mux(packet)
            self.done += n

    def flush(self):
        for packet in self.stream.encode(None):
            self.container.mux(packet)


def _half(n: int) -> int:
    return max(16, (n // 2) // 2 * 2)


def _encode(
    container,
    fmt: str,
    frames,
    fps,
    codec,
    pix_fmt,
    fourcc,
    bit_rate,
    rotation,
    audio,
    extra_video_stream,
    options,
    pts,
):
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [n, h, w, 3], got {frames.dtype} {frames.shape}")
    n, height, width, _ = frames.shape
    rate = _as_rate(fps)
    time_base = 1 / rate
    if pts is None:
        pts = list(range(n))
    else:
        pts = [int(p) for p in pts]
        if len(pts) != n or any(b <= a for a, b in zip(pts, pts[1:])):
            raise ValueError("pts must be strictly increasing, one per frame")

    stream = container.add_stream(codec, rate=rate)
    _configure_video(stream, width, height, codec, pix_fmt, fourcc, bit_rate, options, fmt)
    stream.codec_context.time_base = time_base
    if rotation is not None:
        if fmt not in ("mp4", "mov"):
            raise ValueError(f"display-matrix rotation is only supported for mp4/mov, not {fmt!r}")
        if int(rotation) % 90:
            raise ValueError("rotation must be a multiple of 90 degrees")
        stream.set_display_rotation(int(rotation) % 360)

    extra = None
    if extra_video_stream:
        eh, ew = _half(height), _half(width)
        extra = container.add_stream(codec, rate=rate)
        _configure_video(extra, ew, eh, codec, pix_fmt, fourcc, bit_rate, options, fmt)
        extra.codec_context.time_base = time_base
        extra_frames = pattern_frames(n, eh, ew, seed=1)

    feeder = _AudioFeeder(container, _add_audio(container, fmt)) if audio else None

    # Write the header even when no frame will follow (PyAV defers it to the
    # first mux otherwise and would leave no file at all).
    container.start_encoding()

    for i in range(n):
        if feeder is not None:
            feeder.feed_until(float((pts[i] + 1) * time_base))
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frames[i]), format="rgb24")
        frame.pts = pts[i]
        frame.time_base = time_base
        for packet in stream.encode(frame):
            container.mux(packet)
        if extra is not None:
            ef = av.VideoFrame.from_ndarray(extra_frames[i], format="rgb24")
            ef.pts = pts[i]
            ef.time_base = time_base
            for packet in extra.encode(ef):
                container.mux(packet)
    for s in (stream, extra):
        if s is not None:
            for packet in s.encode(None):
                container.mux(packet)
    if feeder is not None:
        feeder.flush()


def write_video(
    path: PathLike,
    frames,
    fps=25,
    codec: str = "mpeg4",
    container_format: Optional[str] = None,
    pix_fmt: str = "yuv420p",
    fourcc: Optional[str] = None,
    bit_rate: Optional[int] = None,
    rotation: Optional[int] = None,
    audio: bool = False,
    extra_video_stream: bool = False,
    options: Optional[Mapping[str, object]] = None,
    pts: Optional[Sequence[int]] = None,
) -> Path:
    """Encode RGB ``frames`` (``uint8 [n, h, w, 3]``) into ``path`` with PyAV.

    ``container_format`` is an FFmpeg muxer name (``"avi"``, ``"mp4"``,
    ``"mov"``, ``"matroska"``, ``"webm"``, ``"h264"``...); when None it is
    guessed from the extension.  ``fourcc`` overrides the codec tag; for AVI
    with ``mpeg4`` it defaults to ``XVID`` like UCF-101.  ``rotation`` (90,
    180, 270; mp4/mov only) writes a display matrix, see the module docstring
    for the direction.  ``audio`` adds a mono 440 Hz sine track covering the
    video (aac, pcm_s16le for avi, opus for webm).  ``extra_video_stream``
    adds a second, half-size video stream with the same codec.  ``options``
    are extra codec options (strings).  ``pts`` (extension) gives explicit
    per-frame timestamps in units of ``1/fps`` for variable frame rate.
    ``n == 0`` writes a header-only file.
    """
    path = _prepare(path)
    fmt = container_format or _guess_format(path)
    container = av.open(str(path), mode="w", format=fmt, options={"fflags": "+bitexact"})
    try:
        _encode(
            container, fmt, frames, fps, codec, pix_fmt, fourcc, bit_rate,
            rotation, audio, extra_video_stream, options, pts,
        )
    finally:
        container.close()
    return path


# --------------------------------------------------------------------------
# Containers / codecs
# --------------------------------------------------------------------------


def ucf_like_avi(path: PathLike, n_frames: int = 30, size=(240, 320)) -> Path:
    """UCF-101 style: MPEG-4 Part 2 (``mpeg4``) in AVI, fourcc ``XVID``, 25 fps."""
    return write_video(
        path, pattern_frames(n_frames, *size), fps=25, codec="mpeg4",
        container_format="avi", fourcc="XVID",
    )


def h264_mp4(path: PathLike, n_frames: int = 10, size=(48, 64), fps=25) -> Path:
    """H.264 (libx264, yuv420p) in MP4."""
    return write_video(path, pattern_frames(n_frames, *size), fps=fps, codec="libx264",
                       container_format="mp4")


def mov_file(path: PathLike, n_frames: int = 10, size=(48, 64), fps=25, codec="libx264") -> Path:
    """QuickTime MOV (H.264 by default)."""
    return write_video(path, pattern_frames(n_frames, *size), fps=fps, codec=codec,
                       container_format="mov")


def mkv_file(path: PathLike, n_frames: int = 10, size=(48, 64), fps=25, codec="libx264") -> Path:
    """Matroska (H.264 by default), written seekably (has duration and cues)."""
    return write_video(path, pattern_frames(n_frames, *size), fps=fps, codec=codec,
                       container_format="matroska")


def webm_vp8(path: PathLike, n_frames: int = 10, size=(48, 64), fps=25) -> Path:
    """VP8 (libvpx) in WebM."""
    return write_video(path, pattern_frames(n_frames, *size), fps=fps, codec="libvpx",
                       container_format="webm")


def h264_avi(path: PathLike, n_frames: int = 10, size=(48, 64), fps=25) -> Path:
    """H.264 (libx264, with B-frames) inside AVI, fourcc ``H264``."""
    return write_video(path, pattern_frames(n_frames, *size), fps=fps, codec="libx264",
                       container_format="avi")


def misleading_extension(path: PathLike, n_frames: int = 10, size=(48, 64), container_format="mp4",
                         codec="libx264") -> Path:
    """A container whose name lies: MP4/H.264 content whatever ``path`` ends
    with (use e.g. ``clip.avi``).  FFmpeg probes by content, so it opens as MP4."""
    return write_video(path, pattern_frames(n_frames, *size), fps=25, codec=codec,
                       container_format=container_format)


def rotated_mp4(path: PathLike, degrees: int = 90, size=(48, 64), n_frames: int = 5) -> Path:
    """MP4/H.264 stored landscape (``size`` = h x w, h < w) with a display
    matrix rotating by ``degrees`` (counter-clockwise, FFmpeg convention), so
    for 90/270 it displays portrait.  Decoding gives ``frame.rotation % 360
    == degrees`` and un-rotated ``size`` pixels."""
    return write_video(path, pattern_frames(n_frames, *size), fps=25, codec="libx264",
                       container_format="mp4", rotation=degrees)


# Gaps, in 1/25 s ticks, between consecutive frames of vfr_mp4: 1, 3, 1, 3, ...
VFR_PTS_PATTERN = (1, 3)


def vfr_mp4(path: PathLike, n_frames: int = 12, size=(48, 64)) -> Path:
    """Variable frame rate MP4/H.264: presentation times alternate gaps of
    1/25 s and 3/25 s (pts 0, 1, 4, 5, 8, ... in 1/25 units), so the average
    rate is 12.5 fps while the nominal codec rate is 25."""
    pts, t = [], 0
    for i in range(n_frames):
        pts.append(t)
        t += VFR_PTS_PATTERN[i % len(VFR_PTS_PATTERN)]
    return write_video(path, pattern_frames(n_frames, *size), fps=25, codec="libx264",
                       container_format="mp4", pts=pts)


def non25_fps(path: PathLike, fps=30, n_frames: int = 10, size=(48, 64)) -> Path:
    """Constant frame rate MP4/H.264 at ``fps`` (default 30; Fractions such as
    ``Fraction(30000, 1001)`` work)."""
    return write_video(path, pattern_frames(n_frames, *size), fps=fps, codec="libx264",
                       container_format="mp4")


def fps_12(path: PathLike, n_frames: int = 6, size=(48, 64)) -> Path:
    """12 fps, UCF-style AVI (mpeg4/XVID)."""
    return write_video(path, pattern_frames(n_frames, *size), fps=12, codec="mpeg4",
                       container_format="avi")


class _NonSeekableSink(io.RawIOBase):
    """Write-only, non-seekable file wrapper: makes muxers skip the
    duration / cue / index back-patching they do on close."""

    def __init__(self, raw):
        super().__init__()
        self._raw = raw

    def writable(self):
        return True

    def seekable(self):
        return False

    def write(self, b):
        return self._raw.write(b)


def no_duration_stream(path: PathLike, n_frames: int = 10, size=(48, 64), kind: str = "mkv") -> Path:
    """A file whose headers carry neither duration nor frame count, but whose
    frames decode.

    ``kind="mkv"`` (default): Matroska/H.264 muxed into a non-seekable sink, so
    no Duration element, no Cues: ``stream.frames == 0``, ``stream.duration is
    None``, ``container.duration is None``; frames still carry pts (1/1000 tb).

    ``kind="h264"``: raw H.264 Annex-B elementary stream: same header
    properties, and in addition decoded frames have ``pts is None``.
    """
    frames = pattern_frames(n_frames, *size)
    path = _prepare(path)
    if kind == "h264":
        return write_video(path, frames, fps=25, codec="libx264", container_format="h264")
    if kind != "mkv":
        raise ValueError(f"kind must be 'mkv' or 'h264', got {kind!r}")
    with open(path, "wb") as raw:
        sink = _NonSeekableSink(raw)
        container = av.open(sink, mode="w", format="matroska", options={"fflags": "+bitexact"})
        try:
            _encode(container, "matroska", frames, 25, "libx264", "yuv420p", None, None,
                    None, False, False, None, None)
        finally:
            container.close()
    return path


# --------------------------------------------------------------------------
# Stream layouts
# --------------------------------------------------------------------------


def with_audio(path: PathLike, n_frames: int = 10, size=(48, 64), container_format="mp4",
               codec="libx264") -> Path:
    """Video plus a mono 16 kHz AAC sine track (MP4/H.264 by default).
    With ``container_format="avi"`` the audio is pcm_s16le."""
    return write_video(path, pattern_frames(n_frames, *size), fps=25, codec=codec,
                       container_format=container_format, audio=True)


def audio_only(path: PathLike, seconds: float = 0.5, container_format: str = "wav") -> Path:
    """An audio-only file (WAV, pcm_s16le mono 16 kHz by default), written as
    that format whatever the extension: name it ``.avi`` to fake a video."""
    path = _prepare(path)
    container = av.open(str(path), mode="w", format=container_format,
                        options={"fflags": "+bitexact"})
    try:
        feeder = _AudioFeeder(container, _add_audio(container, container_format))
        container.start_encoding()
        feeder.feed_until(seconds)
        feeder.flush()
    finally:
        container.close()
    return path


def two_video_streams(path: PathLike, n_frames: int = 6, size=(48, 64),
                      container_format="matroska", codec="mpeg4") -> Path:
    """Two video streams of different sizes: ``size`` (stream 0) and half of
    it (stream 1, min 16 px, different seed).  Matroska/mpeg4 by default."""
    return write_video(path, pattern_frames(n_frames, *size), fps=25, codec=codec,
                       container_format=container_format, extra_video_stream=True)


# --------------------------------------------------------------------------
# Sizes (UCF-style AVI: mpeg4 / XVID / 25 fps unless noted)
# --------------------------------------------------------------------------


def qcif(path: PathLike, n_frames: int = 5) -> Path:
    """QCIF 176x144 (w x h)."""
    return ucf_like_avi(path, n_frames=n_frames, size=(144, 176))


def tiny_16(path: PathLike, n_frames: int = 5) -> Path:
    """16x16."""
    return ucf_like_avi(path, n_frames=n_frames, size=(16, 16))


def portrait(path: PathLike, n_frames: int = 5, size=(320, 240)) -> Path:
    """Stored portrait (height 320 > width 240), no rotation metadata."""
    return ucf_like_avi(path, n_frames=n_frames, size=size)


def large_4k(path: PathLike, n_frames: int = 3) -> Path:
    """3840x2160 (w x h), mpeg4/XVID AVI at the coarsest quantiser (qscale 31)
    to stay fast and small-ish."""
    return write_video(path, pattern_frames(n_frames, 2160, 3840), fps=25, codec="mpeg4",
                       container_format="avi", options={"qmin": 31, "qmax": 31})


# --------------------------------------------------------------------------
# Broken / degenerate files
# --------------------------------------------------------------------------


def zero_byte(path: PathLike) -> Path:
    """An empty file."""
    path = _prepare(path)
    path.write_bytes(b"")
    return path


def random_bytes(path: PathLike, n: int = 4096, seed: int = 0) -> Path:
    """``n`` bytes of seeded noise (not a media file)."""
    path = _prepare(path)
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes())
    return path


def truncated(path: PathLike, keep_fraction: float = 0.5, n_frames: int = 30, size=(240, 320)) -> Path:
    """A valid :func:`ucf_like_avi` cut after ``keep_fraction`` of its bytes:
    the header still claims ``n_frames`` but the tail (and the ``idx1``
    index) is gone, so fewer frames decode."""
    if not 0 < keep_fraction < 1:
        raise ValueError("keep_fraction must be in (0, 1)")
    path = ucf_like_avi(path, n_frames=n_frames, size=size)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep_fraction)])
    return path


def one_frame(path: PathLike, size=(240, 320)) -> Path:
    """UCF-style AVI with exactly one frame."""
    return ucf_like_avi(path, n_frames=1, size=size)


def zero_frames(path: PathLike, size=(240, 320)) -> Path:
    """UCF-style AVI (mpeg4/XVID) with a video stream but no frames.

    AVI is used because it is the container where FFmpeg keeps an empty
    video stream: MP4/MOV drop a track without samples and an empty Matroska
    cannot be probed."""
    return write_video(path, np.zeros((0, size[0], size[1], 3), np.uint8), fps=25,
                       codec="mpeg4", container_format="avi", fourcc="XVID")


def corrupt_middle(path: PathLike, n_frames: int = 30, size=(240, 320), n_bytes: int = 4096,
                   seed: int = 0) -> Path:
    """A valid :func:`ucf_like_avi` with ``n_bytes`` of seeded garbage
    overwritten at the middle of the file (inside the ``movi`` payload; the
    headers and the trailing ``idx1`` index stay intact).  The file keeps its
    size and still opens, but some frames fail to decode or decode damaged."""
    path = ucf_like_avi(path, n_frames=n_frames, size=size)
    data = bytearray(path.read_bytes())
    start = len(data) // 2 - n_bytes // 2
    if start <= 0:
        raise ValueError("file too small to corrupt its middle")
    garbage = np.random.default_rng(seed).integers(0, 256, n_bytes, dtype=np.uint8).tobytes()
    data[start : start + n_bytes] = garbage
    path.write_bytes(bytes(data))
    return path


# --------------------------------------------------------------------------
# Packet-level damage (decoder errors, not just garbled pixels)
# --------------------------------------------------------------------------
# corrupt_middle/truncated damage bytes of the file at random; FFmpeg's decoders conceal most of that
# and rarely report an error.  These factories damage ONE chosen packet where the codec must reject it
# (its header, its start code), remuxing every other packet untouched, so `packet.decode()` raises
# av.error.InvalidDataError for that packet with FFmpeg 8 (checked in test_media_factory.py).
# Theora: this FFmpeg build has a Theora decoder but no encoder, so the damaged-Ogg cases carry VP8.

DAMAGED_PACKET_FRAMES = 30


def damaged_packet_index(n_packets: int) -> int:
    """The packet the damage factories break: the middle one (never the first keyframe)."""
    return n_packets // 2


def _remux_damaging(src: Path, dst: Path, fmt: str, damage) -> Path:
    """Copy every packet of the video stream of `src` into a new `fmt` file at `dst`, passing the
    middle packet's bytes through `damage(bytearray)` first."""
    with av.open(str(src)) as inp:
        stream = inp.streams.video[0]
        packets = [p for p in inp.demux(stream) if p.size]
        mid = damaged_packet_index(len(packets))
        tmp = dst.with_name(dst.name + ".part")
        with av.open(str(tmp), "w", format=fmt, options={"fflags": "+bitexact"}) as out:
            ostream = out.add_stream_from_template(stream)
            ostream.codec_context.codec_tag = stream.codec_context.codec_tag  # the AVI muxer resets XVID
            for i, p in enumerate(packets):
                if i == mid:
                    data = bytearray(bytes(p))
                    damage(data)
                    q = av.Packet(bytes(data))
                    q.pts, q.dts, q.time_base, q.is_keyframe = p.pts, p.dts, p.time_base, p.is_keyframe
                    p = q
                p.stream = ostream
                out.mux(p)
    os.replace(tmp, dst)
    return dst


def _flip(start: int, n: int):
    def damage(data: bytearray) -> None:
        for i in range(start, min(len(data), start + n)):
            data[i] ^= 0xFF
    return damage


def _damaged(path: PathLike, codec: str, fmt: str, damage, n_frames: int, size) -> Path:
    path = _prepare(path)
    src = path.with_name(path.name + ".clean")
    try:
        write_video(src, pattern_frames(n_frames, *size), fps=25, codec=codec, container_format=fmt)
        return _remux_damaging(src, path, fmt, damage)
    finally:
        src.unlink(missing_ok=True)


def h264_damaged_nal(path: PathLike, n_frames: int = DAMAGED_PACKET_FRAMES, size=(64, 96)) -> Path:
    """MP4/H.264 whose middle packet has bytes flipped inside its first NAL unit: the NAL header and
    the start of the slice header, just after the 4-byte length prefix (forbidden bit set, bad type)."""
    return _damaged(path, "libx264", "mp4", _flip(4, 4), n_frames, size)


def vp9_webm_damaged_frame(path: PathLike, n_frames: int = DAMAGED_PACKET_FRAMES, size=(64, 96)) -> Path:
    """WebM/VP9 whose middle frame has its first bytes (frame marker, profile, show-frame) flipped."""
    return _damaged(path, "libvpx-vp9", "webm", _flip(0, 4), n_frames, size)


def vp8_ogg_damaged_frame(path: PathLike, n_frames: int = DAMAGED_PACKET_FRAMES, size=(64, 96)) -> Path:
    """Ogg/VP8 whose middle frame has its first bytes (frame tag) flipped; the pages' CRCs are valid."""
    return _damaged(path, "libvpx", "ogg", _flip(0, 4), n_frames, size)


def ogg_damaged_page(path: PathLike, page: int = 2, n_frames: int = DAMAGED_PACKET_FRAMES,
                     size=(64, 96)) -> Path:
    """Ogg/VP8 with 8 payload bytes of Ogg page number `page` flipped, so its CRC no longer matches.
    Page 2 holds the first keyframe: every later frame fails to decode (a file to skip)."""
    path = _prepare(path)
    write_video(path, pattern_frames(n_frames, *size), fps=25, codec="libvpx", container_format="ogg")
    data = bytearray(path.read_bytes())
    starts = [i for i in range(len(data) - 3) if data[i:i + 4] == b"OggS"]
    if page >= len(starts):
        raise ValueError(f"the file has {len(starts)} pages, no page {page}")
    p = starts[page]
    payload = p + 27 + data[p + 26]  # fixed header, then one lacing byte per segment
    _flip(payload, 8)(data)  # offsets are absolute here
    path.write_bytes(bytes(data))
    return path


def mpeg4_avi_damaged_frame(path: PathLike, n_frames: int = DAMAGED_PACKET_FRAMES, size=(64, 96)) -> Path:
    """UCF-style AVI (MPEG-4 Part 2, XVID) whose middle frame lost its VOP start code (zeroed)."""
    path = _prepare(path)
    src = path.with_name(path.name + ".clean")
    try:
        ucf_like_avi(src, n_frames=n_frames, size=size)

        def zero_start_code(data: bytearray) -> None:
            data[0:4] = b"\0\0\0\0"
        return _remux_damaging(src, path, "avi", zero_start_code)
    finally:
        src.unlink(missing_ok=True)


# --------------------------------------------------------------------------
# Long videos (memory checks)
# --------------------------------------------------------------------------


def long_video(path: PathLike, n_frames: int, size=(360, 640), fps: int = 25, period: int = 50) -> Path:
    """A long UCF-style AVI (MPEG-4 Part 2, XVID) made fast: ``period`` distinct frames of
    :func:`pattern_frames`, converted to yuv420p once and cycled; ~1,000 frames/s at 640x360 on one
    core, so a 20-minute video takes well under a minute."""
    path = _prepare(path)
    h, w = size
    rgb = pattern_frames(period, h, w)
    planes = [av.VideoFrame.from_ndarray(f, format="rgb24").reformat(format="yuv420p").to_ndarray() for f in rgb]
    with av.open(str(path), mode="w", format="avi") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.codec_context.codec_tag = "XVID"
        stream.bit_rate = 400_000
        for i in range(n_frames):
            frame = av.VideoFrame.from_ndarray(planes[i % period], format="yuv420p")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path
