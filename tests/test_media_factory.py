"""Checks that every factory in ``tests/media_factory.py`` writes what it claims.

Everything is verified with PyAV; a few properties are cross-checked with the
``ffprobe`` CLI when it is installed (those tests skip otherwise).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import media_factory as mf  # noqa: E402

FFPROBE = shutil.which("ffprobe")
needs_ffprobe = pytest.mark.skipif(FFPROBE is None, reason="ffprobe CLI not installed")
MP4_FORMAT = "mov,mp4,m4a,3gp,3g2,mj2"
MKV_FORMAT = "matroska,webm"


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("media")


def decode_video(path, index=0, rgb=True):
    """Strict decode of one video stream: (frames [n,h,w,3] or None, list of VideoFrame-like dicts)."""
    arrays, infos = [], []
    with av.open(str(path)) as c:
        stream = c.streams.video[index]
        for frame in c.decode(stream):
            infos.append(
                {"pts": frame.pts, "time": frame.time, "rotation": frame.rotation,
                 "w": frame.width, "h": frame.height}
            )
            if rgb:
                arrays.append(frame.to_ndarray(format="rgb24"))
    return (np.stack(arrays) if arrays else None), infos


def tolerant_decode_count(path):
    """Decode packet by packet, counting frames and decoder errors instead of raising."""
    frames = errors = 0
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        for packet in c.demux(stream):
            try:
                frames += len(stream.decode(packet))  # packet.dts None -> flush packet
            except av.error.FFmpegError:
                errors += 1
    return frames, errors


def assert_like_pattern(decoded, seed=0, tol=12.0):
    """Decoded frames match pattern_frames closely, and better than a 1-frame shift."""
    n, h, w, _ = decoded.shape
    ref = mf.pattern_frames(n, h, w, seed=seed).astype(np.int16)
    err = np.abs(decoded.astype(np.int16) - ref).mean(axis=(1, 2, 3))
    assert err.max() < tol, err
    if n > 1:
        shifted = np.abs(decoded[1:].astype(np.int16) - ref[:-1]).mean(axis=(1, 2, 3))
        assert (err[1:] < shifted).all(), (err, shifted)


def ffprobe(path):
    res = subprocess.run(
        [FFPROBE, "-v", "error", "-print_format", "json", "-show_format", "-show_streams", str(path)],
        capture_output=True, text=True, check=True, timeout=30,
    )
    return json.loads(res.stdout)


def md5(path):
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


# --------------------------------------------------------------------------
# pattern
# --------------------------------------------------------------------------


def test_pattern_frames_shape_determinism_and_motion():
    a = mf.pattern_frames(4, 24, 32)
    assert a.shape == (4, 24, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, mf.pattern_frames(4, 24, 32, seed=0))
    assert not np.array_equal(a, mf.pattern_frames(4, 24, 32, seed=1))
    # moving: consecutive frames differ noticeably; every channel varies spatially
    assert np.abs(a[1].astype(int) - a[0]).mean() > 5
    for ch in range(3):
        assert a[0, ..., ch].std() > 10
    assert mf.pattern_frames(0, 8, 8).shape == (0, 8, 8, 3)


# --------------------------------------------------------------------------
# containers / codecs
# --------------------------------------------------------------------------


def test_ucf_like_avi(out):
    p = mf.ucf_like_avi(out / "ucf" / "v_Test_g01_c01.avi")  # parent dir is created
    assert p.exists() and p.suffix == ".avi"
    with av.open(str(p)) as c:
        assert c.format.name == "avi"
        assert len(c.streams.video) == 1 and len(c.streams.audio) == 0
        s = c.streams.video[0]
        assert s.codec_context.name == "mpeg4"
        assert s.codec_context.codec_tag == "XVID"
        assert (s.width, s.height) == (320, 240)
        assert s.average_rate == 25
        assert s.frames == 30
    frames, infos = decode_video(p)
    assert frames.shape == (30, 240, 320, 3)
    assert [i["pts"] for i in infos] == list(range(30))
    assert_like_pattern(frames)


@needs_ffprobe
def test_ucf_like_avi_ffprobe(out):
    info = ffprobe(mf.ucf_like_avi(out / "ucf_probe.avi", n_frames=5))
    (st,) = info["streams"]
    assert info["format"]["format_name"] == "avi"
    assert st["codec_name"] == "mpeg4" and st["codec_tag_string"] == "XVID"
    assert st["r_frame_rate"] == "25/1" and st["nb_frames"] == "5"


@pytest.mark.parametrize(
    "factory, fmt, codec, brand",
    [
        (mf.h264_mp4, MP4_FORMAT, "h264", "isom"),
        (mf.mov_file, MP4_FORMAT, "h264", "qt  "),
        (mf.mkv_file, MKV_FORMAT, "h264", None),
        (mf.webm_vp8, MKV_FORMAT, "vp8", None),
        (mf.h264_avi, "avi", "h264", None),
    ],
)
def test_containers(out, factory, fmt, codec, brand):
    p = factory(out / f"{factory.__name__}.bin")
    with av.open(str(p)) as c:
        assert c.format.name == fmt
        if brand is not None:
            assert c.metadata.get("major_brand") == brand
        assert len(c.streams) == 1
        s = c.streams.video[0]
        assert s.codec_context.name == codec
        assert (s.width, s.height) == (64, 48)
        assert s.average_rate == 25
    frames, _ = decode_video(p)
    assert frames.shape == (10, 48, 64, 3)
    assert_like_pattern(frames)


@needs_ffprobe
def test_webm_and_h264_avi_ffprobe(out):
    w = ffprobe(mf.webm_vp8(out / "probe.webm"))
    assert "webm" in w["format"]["format_name"] and w["streams"][0]["codec_name"] == "vp8"
    a = ffprobe(mf.h264_avi(out / "probe_h264.avi"))
    assert a["format"]["format_name"] == "avi"
    assert a["streams"][0]["codec_name"] == "h264" and a["streams"][0]["codec_tag_string"] == "H264"


def test_misleading_extension(out):
    p = mf.misleading_extension(out / "actually_mp4.avi")
    assert p.suffix == ".avi"
    assert p.read_bytes()[4:8] == b"ftyp"  # ISO-BMFF, not RIFF
    with av.open(str(p)) as c:
        assert c.format.name == MP4_FORMAT
        assert c.streams.video[0].codec_context.name == "h264"
    frames, _ = decode_video(p)
    assert len(frames) == 10


@pytest.mark.parametrize("degrees", [90, 180, 270])
def test_rotated_mp4(out, degrees):
    p = mf.rotated_mp4(out / f"rot{degrees}.mp4", degrees=degrees)
    with av.open(str(p)) as c:
        s = c.streams.video[0]
        assert (s.width, s.height) == (64, 48)  # stored landscape
    frames, infos = decode_video(p)
    assert frames.shape == (5, 48, 64, 3)  # decoder does not rotate pixels
    assert {i["rotation"] % 360 for i in infos} == {degrees}
    # display size after applying the rotation
    disp_w, disp_h = (48, 64) if degrees in (90, 270) else (64, 48)
    if degrees in (90, 270):
        assert disp_h > disp_w  # displays portrait
    assert_like_pattern(frames)


@needs_ffprobe
def test_rotated_mp4_ffprobe_display_matrix(out):
    info = ffprobe(mf.rotated_mp4(out / "rot_probe.mp4", degrees=90))
    side = info["streams"][0].get("side_data_list", [])
    dm = [d for d in side if d.get("side_data_type") == "Display Matrix"]
    assert dm and int(dm[0]["rotation"]) == 90


def test_rotation_rejected_where_unsupported(out):
    with pytest.raises(ValueError):
        mf.write_video(out / "bad_rot.avi", mf.pattern_frames(2, 16, 16), rotation=90)


def test_vfr_mp4(out):
    p = mf.vfr_mp4(out / "vfr.mp4")
    _, infos = decode_video(p, rgb=False)
    assert len(infos) == 12
    times = [Fraction(i["time"]).limit_denominator(1000) for i in infos]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert gaps == [Fraction(1, 25) if k % 2 == 0 else Fraction(3, 25) for k in range(11)]
    with av.open(str(p)) as c:
        assert c.streams.video[0].average_rate != 25


@pytest.mark.parametrize("fps", [30, Fraction(30000, 1001)])
def test_non25_fps(out, fps):
    p = mf.non25_fps(out / f"fps_{float(fps):.3f}.mp4", fps=fps)
    with av.open(str(p)) as c:
        s = c.streams.video[0]
        assert abs(float(s.average_rate) - float(fps)) < 1e-3
    _, infos = decode_video(p, rgb=False)
    assert len(infos) == 10
    gaps = np.diff([i["time"] for i in infos])
    assert np.allclose(gaps, 1 / float(fps), atol=1e-3)


def test_fps_12(out):
    p = mf.fps_12(out / "fps12.avi")
    with av.open(str(p)) as c:
        assert c.format.name == "avi"
        assert c.streams.video[0].average_rate == 12
        assert c.streams.video[0].codec_context.codec_tag == "XVID"
    _, infos = decode_video(p, rgb=False)
    assert len(infos) == 6
    assert np.allclose(np.diff([i["time"] for i in infos]), 1 / 12)


@pytest.mark.parametrize("kind, name", [("mkv", "nodur.mkv"), ("h264", "nodur.h264")])
def test_no_duration_stream(out, kind, name):
    p = mf.no_duration_stream(out / name, kind=kind)
    with av.open(str(p)) as c:
        assert c.format.name == (MKV_FORMAT if kind == "mkv" else "h264")
        s = c.streams.video[0]
        assert s.codec_context.name == "h264"
        assert s.frames == 0
        assert s.duration is None
        assert c.duration is None
    frames, infos = decode_video(p)
    assert len(frames) == 10
    assert_like_pattern(frames)
    if kind == "h264":
        assert all(i["pts"] is None for i in infos)
    else:
        assert [i["pts"] for i in infos] == [40 * k for k in range(10)]


@needs_ffprobe
def test_no_duration_stream_ffprobe(out):
    info = ffprobe(mf.no_duration_stream(out / "nodur_probe.mkv"))
    assert "duration" not in info["format"]
    assert "duration" not in info["streams"][0] and "nb_frames" not in info["streams"][0]


# --------------------------------------------------------------------------
# stream layouts
# --------------------------------------------------------------------------


def test_with_audio(out):
    p = mf.with_audio(out / "av.mp4")
    with av.open(str(p)) as c:
        assert len(c.streams.video) == 1 and len(c.streams.audio) == 1
        a = c.streams.audio[0]
        assert a.codec_context.name == "aac" and a.codec_context.sample_rate == 16000
        samples = sum(f.samples for f in c.decode(audio=0))
    assert samples >= 16000 * 10 / 25  # covers the 0.4 s of video
    frames, _ = decode_video(p)
    assert len(frames) == 10


def test_with_audio_avi_pcm(out):
    p = mf.with_audio(out / "av.avi", container_format="avi", codec="mpeg4")
    with av.open(str(p)) as c:
        assert c.format.name == "avi"
        assert c.streams.video[0].codec_context.codec_tag == "XVID"
        assert c.streams.audio[0].codec_context.name == "pcm_s16le"


def test_audio_only(out):
    p = mf.audio_only(out / "not_a_video.avi")
    with av.open(str(p)) as c:
        assert c.format.name == "wav"
        assert len(c.streams.video) == 0 and len(c.streams.audio) == 1
        assert c.streams.audio[0].codec_context.name == "pcm_s16le"
        assert sum(f.samples for f in c.decode(audio=0)) == 8000


def test_two_video_streams(out):
    p = mf.two_video_streams(out / "two.mkv")
    with av.open(str(p)) as c:
        assert len(c.streams.video) == 2
        sizes = [(s.width, s.height) for s in c.streams.video]
    assert sizes == [(64, 48), (32, 24)]
    f0, _ = decode_video(p, 0)
    f1, _ = decode_video(p, 1)
    assert f0.shape == (6, 48, 64, 3) and f1.shape == (6, 24, 32, 3)
    assert_like_pattern(f0)
    assert_like_pattern(f1, seed=1, tol=20)


# --------------------------------------------------------------------------
# sizes
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "factory, wh, n",
    [(mf.qcif, (176, 144), 5), (mf.tiny_16, (16, 16), 5), (mf.portrait, (240, 320), 5)],
)
def test_sizes(out, factory, wh, n):
    p = factory(out / f"{factory.__name__}.avi")
    with av.open(str(p)) as c:
        s = c.streams.video[0]
        assert (s.width, s.height) == wh
        assert s.codec_context.name == "mpeg4" and s.codec_context.codec_tag == "XVID"
    frames, infos = decode_video(p)
    assert frames.shape == (n, wh[1], wh[0], 3)
    assert all(i["rotation"] == 0 for i in infos)
    if factory is not mf.tiny_16:  # 16x16 at default bitrate is too coarse to compare tightly
        assert_like_pattern(frames)


def test_large_4k(out):
    p = mf.large_4k(out / "uhd.avi")
    with av.open(str(p)) as c:
        s = c.streams.video[0]
        assert (s.width, s.height) == (3840, 2160)
        assert s.frames == 3
    _, infos = decode_video(p, rgb=False)
    assert [(i["w"], i["h"]) for i in infos] == [(3840, 2160)] * 3


# --------------------------------------------------------------------------
# broken / degenerate
# --------------------------------------------------------------------------


def test_zero_byte(out):
    p = mf.zero_byte(out / "empty.avi")
    assert p.stat().st_size == 0
    with pytest.raises(av.error.FFmpegError):
        av.open(str(p))


def test_random_bytes(out):
    p = mf.random_bytes(out / "noise.avi", n=4096, seed=3)
    assert p.stat().st_size == 4096
    assert p.read_bytes() == mf.random_bytes(out / "noise2.avi", n=4096, seed=3).read_bytes()
    with pytest.raises(av.error.FFmpegError):
        av.open(str(p))


def test_truncated(out):
    full = mf.ucf_like_avi(out / "full.avi")
    p = mf.truncated(out / "trunc.avi", keep_fraction=0.5)
    assert p.stat().st_size == full.stat().st_size // 2
    assert full.read_bytes().startswith(p.read_bytes())
    with av.open(str(p)) as c:
        assert c.streams.video[0].frames == 30  # header still claims the full clip
    frames, _ = tolerant_decode_count(p)
    assert 0 < frames < 30


def test_one_frame(out):
    p = mf.one_frame(out / "one.avi")
    with av.open(str(p)) as c:
        assert c.streams.video[0].frames == 1
    frames, _ = decode_video(p)
    assert frames.shape == (1, 240, 320, 3)
    assert_like_pattern(frames)


def test_zero_frames(out):
    p = mf.zero_frames(out / "none.avi")
    with av.open(str(p)) as c:
        assert c.format.name == "avi"
        assert len(c.streams.video) == 1
        s = c.streams.video[0]
        assert s.codec_context.name == "mpeg4" and s.codec_context.codec_tag == "XVID"
        assert (s.width, s.height) == (320, 240)
        assert s.frames == 0
    frames, infos = decode_video(p)
    assert frames is None and infos == []


def test_corrupt_middle(out):
    clean = mf.ucf_like_avi(out / "clean.avi").read_bytes()
    p = mf.corrupt_middle(out / "corrupt.avi", n_bytes=4096)
    bad = p.read_bytes()
    assert len(bad) == len(clean)
    diff = np.flatnonzero(np.frombuffer(bad, np.uint8) != np.frombuffer(clean, np.uint8))
    mid = len(clean) // 2
    assert diff.size > 0 and mid - 2048 <= diff.min() and diff.max() < mid + 2048
    with av.open(str(p)) as c:
        assert c.streams.video[0].frames == 30  # headers/index intact
    frames, errors = tolerant_decode_count(p)
    assert frames > 0
    assert frames < 30 or errors > 0


# --------------------------------------------------------------------------
# writer properties
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "factory", [mf.ucf_like_avi, mf.h264_mp4, mf.webm_vp8, mf.with_audio, mf.no_duration_stream]
)
def test_deterministic(out, factory):
    a = factory(out / "det_a" / f"{factory.__name__}.bin")
    b = factory(out / "det_b" / f"{factory.__name__}.bin")
    assert md5(a) == md5(b)


def test_write_video_accepts_str_and_returns_path(out):
    p = mf.write_video(str(out / "s" / "x.mkv"), mf.pattern_frames(3, 16, 32), codec="mjpeg")
    assert isinstance(p, Path) and p.exists()
    with av.open(str(p)) as c:
        assert c.format.name == MKV_FORMAT
        assert c.streams.video[0].codec_context.name == "mjpeg"
    frames, _ = decode_video(p)
    assert frames.shape == (3, 16, 32, 3)


# --------------------------------------------------------------------------
# packet-level damage
# --------------------------------------------------------------------------

DAMAGED = [
    (mf.h264_damaged_nal, MP4_FORMAT, "h264"),
    (mf.vp9_webm_damaged_frame, MKV_FORMAT, "vp9"),
    (mf.vp8_ogg_damaged_frame, "ogg", "vp8"),
    (mf.mpeg4_avi_damaged_frame, "avi", "mpeg4"),
]


@pytest.mark.parametrize("factory,fmt,codec", DAMAGED, ids=[f.__name__ for f, _, _ in DAMAGED])
def test_damaged_packet_factories_make_the_decoder_raise(out, factory, fmt, codec):
    p = factory(out / "damaged" / f"{factory.__name__}.bin")
    with av.open(str(p)) as c:
        assert c.format.name == fmt and c.streams.video[0].codec_context.name == codec
        if codec == "mpeg4":
            assert c.streams.video[0].codec_context.codec_tag == "XVID"
    frames, errors = tolerant_decode_count(p)
    assert errors >= 1, "no packet-level decode error: the damage was concealed"
    assert mf.DAMAGED_PACKET_FRAMES - errors - 2 <= frames < mf.DAMAGED_PACKET_FRAMES
    assert md5(p) == md5(factory(out / "damaged2" / f"{factory.__name__}.bin"))  # deterministic


def test_ogg_damaged_page_breaks_every_frame_after_its_keyframe(out):
    p = mf.ogg_damaged_page(out / "page.ogv")
    frames, errors = tolerant_decode_count(p)
    assert frames == 0 and errors >= mf.DAMAGED_PACKET_FRAMES - 2
