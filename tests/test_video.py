"""Decode/encode round trips and real-world files (containers, codecs, rotation, frame rates, sizes)."""

import re
from pathlib import Path

import av
import av.error
import numpy as np
import pytest

import media_factory as mf
from components.data import video as video_module
from components.data.video import (
    VideoDecodeError, VideoStream, center_crop, decode_video, encode_avi, scaled_size,
)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255.0 ** 2 / max(mse, 1e-10))


def area_resize(frames: np.ndarray, factor: int) -> np.ndarray:
    t, h, w, c = frames.shape
    return frames.reshape(t, h // factor, factor, w // factor, factor, c).astype(np.float64).mean(axis=(2, 4))


def test_scaled_size_and_crop():
    assert scaled_size(320, 240, 128) == (171, 128)
    assert scaled_size(240, 320, 128) == (128, 171)
    assert scaled_size(16, 16, 64) == (64, 64)
    assert scaled_size(3840, 2160, 64) == (114, 64)
    img = np.arange(10 * 14).reshape(10, 14)
    np.testing.assert_array_equal(center_crop(img, 10), img[:, 2:12])


def test_avi_round_trip_is_ucf_format_and_faithful(tmp_path: Path):
    import av

    src = mf.pattern_frames(20, 128, 256)
    path = tmp_path / "clip.avi"
    encode_avi(path, src, fps=25, bit_rate=4_000_000)
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        assert c.format.name == "avi" and s.codec_context.name == "mpeg4"
        assert s.codec_context.codec_tag == "XVID" and (s.width, s.height) == (256, 128)
    out = decode_video(path, 64)
    assert out.frames.shape == (20, 64, 64, 3) and out.frames.dtype == np.uint8 and out.fps == 25.0
    # Antialiased resize: matches 2x2 area averaging of the source, then the centre crop.
    expected = area_resize(src, 2)[:, :, 32:96]
    assert psnr(out.frames, expected) > 30


def test_encode_is_deterministic(tmp_path: Path):
    src = mf.pattern_frames(10, 48, 64)
    encode_avi(tmp_path / "a.avi", src)
    encode_avi(tmp_path / "b.avi", src)
    assert (tmp_path / "a.avi").read_bytes() == (tmp_path / "b.avi").read_bytes()


@pytest.mark.parametrize("factory,codec", [
    (mf.h264_mp4, "h264"), (mf.mov_file, "h264"), (mf.mkv_file, "h264"), (mf.webm_vp8, "vp8"),
    (mf.h264_avi, "h264"), (mf.ucf_like_avi, "mpeg4"),
])
def test_containers_and_codecs_decode(tmp_path: Path, factory, codec):
    path = factory(tmp_path / "clip.bin")  # the extension must not matter
    out = decode_video(path, 32)
    assert out.codec == codec
    assert out.frames.shape[1:] == (32, 32, 3) and len(out.frames) >= 5


def test_misleading_extension(tmp_path: Path):
    out = decode_video(mf.misleading_extension(tmp_path / "clip.avi"), 32)
    assert "mp4" in out.container_format and len(out.frames) == 10


@pytest.mark.parametrize("degrees", [90, 180, 270])
def test_rotation_metadata_is_applied(tmp_path: Path, degrees):
    frames = np.zeros((4, 48, 64, 3), np.uint8)
    frames[:, :16, :16] = 255  # bright block in the stored top-left corner
    path = mf.write_video(tmp_path / "rot.mp4", frames, codec="libx264", rotation=degrees)
    out = decode_video(path, 48)
    assert out.rotation == degrees
    bright = out.frames[0].mean(axis=-1) > 128
    ys, xs = np.nonzero(bright)
    corner = ("top" if ys.mean() < 24 else "bottom", "left" if xs.mean() < 24 else "right")
    # Counter-clockwise display rotation moves the stored top-left corner here:
    assert corner == {90: ("bottom", "left"), 180: ("bottom", "right"), 270: ("top", "right")}[degrees]


def test_portrait_and_odd_sizes(tmp_path: Path):
    for factory, shape in [(mf.portrait, (320, 240)), (mf.qcif, (144, 176)), (mf.tiny_16, (16, 16))]:
        out = decode_video(factory(tmp_path / f"{factory.__name__}.avi"), 64)
        assert out.frames.shape[1:] == (64, 64, 3)
        assert (out.source_height, out.source_width) == shape


def test_4k_source(tmp_path: Path):
    out = decode_video(mf.large_4k(tmp_path / "big.avi"), 64)
    assert out.frames.shape == (3, 64, 64, 3) and (out.source_width, out.source_height) == (3840, 2160)


def test_native_and_resampled_frame_rates(tmp_path: Path):
    out = decode_video(mf.non25_fps(tmp_path / "30.mp4", fps=30, n_frames=30), 32)
    assert out.fps == pytest.approx(30.0) and len(out.frames) == 30
    resampled = decode_video(tmp_path / "30.mp4", 32, fps=15)
    assert resampled.fps == 15.0 and len(resampled.frames) == 15
    up = decode_video(mf.fps_12(tmp_path / "12.avi", n_frames=6), 32, fps=24)
    assert len(up.frames) == 12
    np.testing.assert_array_equal(up.frames[0], up.frames[1])  # each source frame shown twice


def test_variable_frame_rate_resamples_by_timestamp(tmp_path: Path):
    path = mf.vfr_mp4(tmp_path / "vfr.mp4", n_frames=12)  # pts 0,1,4,5,8,9,... in 1/25 s
    native = decode_video(path, 32)
    assert len(native.frames) == 12
    fixed = decode_video(path, 32, fps=25)
    # 12 frames cover ~ 6 groups x 4 ticks = 24 ticks at 25 fps; held frames repeat.
    assert 22 <= len(fixed.frames) <= 25
    np.testing.assert_array_equal(fixed.frames[1], native.frames[1])
    np.testing.assert_array_equal(fixed.frames[2], native.frames[1])  # gap: frame 1 held
    np.testing.assert_array_equal(fixed.frames[4], native.frames[2])


@pytest.mark.parametrize("kind", ["mkv", "h264"])
def test_streams_without_duration_or_frame_count(tmp_path: Path, kind):
    path = mf.no_duration_stream(tmp_path / f"nodur.{kind}", n_frames=10, kind=kind)
    assert len(decode_video(path, 32).frames) == 10


def test_extra_streams(tmp_path: Path):
    assert len(decode_video(mf.with_audio(tmp_path / "a.mp4"), 32).frames) == 10
    out = decode_video(mf.two_video_streams(tmp_path / "two.mkv"), 32)
    assert (out.source_width, out.source_height) == (64, 48)  # the main (larger) stream


@pytest.mark.parametrize("factory,reason", [
    (mf.zero_byte, "empty file"), (mf.random_bytes, "not a readable media file"),
    (mf.audio_only, "no video stream"), (mf.zero_frames, "no frames"),
])
def test_unusable_files_raise_with_reason(tmp_path: Path, factory, reason):
    with pytest.raises(VideoDecodeError, match=reason):
        decode_video(factory(tmp_path / "bad.avi"), 32)


def test_damaged_files_keep_decodable_frames(tmp_path: Path):
    assert 0 < len(decode_video(mf.truncated(tmp_path / "t.avi"), 32).frames) < 30
    out = decode_video(mf.corrupt_middle(tmp_path / "c.avi"), 32)
    assert 0 < len(out.frames) <= 30
    assert len(decode_video(mf.one_frame(tmp_path / "one.avi"), 32).frames) == 1


def test_every_pyav_error_name_the_decoder_uses_exists():
    """An `except av.error.X` naming a class PyAV lacks raises AttributeError only when an error
    happens (PyAV 18 has no av.error.ValueError): check every name against the installed PyAV."""
    names = set(re.findall(r"av\.error\.(\w+)", Path(video_module.__file__).read_text()))
    assert names, "the decoder names no PyAV error class"
    missing = sorted(n for n in names if not hasattr(av.error, n))
    assert not missing, f"av.error lacks {missing} (PyAV {av.__version__})"
    for cls in video_module.PACKET_DECODE_ERRORS:
        assert issubclass(av.error.InvalidDataError, cls)


@pytest.mark.parametrize("factory", [mf.h264_damaged_nal, mf.vp9_webm_damaged_frame, mf.vp8_ogg_damaged_frame,
                                     mf.mpeg4_avi_damaged_frame], ids=lambda f: f.__name__)
def test_packet_decode_errors_keep_the_good_frames_with_a_note(tmp_path: Path, factory):
    path = factory(tmp_path / factory.__name__)
    out = decode_video(path, 32)
    n = mf.DAMAGED_PACKET_FRAMES
    assert out.bad_packets >= 1 and f"{out.bad_packets} damaged packets skipped" in out.notes
    assert n - out.bad_packets - 2 <= len(out.frames) < n
    # Frames before the damaged packet are exactly what the undamaged file gives (decode order = display
    # order for these low-delay encodes up to there).
    clean = mf.write_video(tmp_path / "clean", mf.pattern_frames(n, 64, 96), fps=25,
                           codec={"h264_damaged_nal": "libx264", "vp9_webm_damaged_frame": "libvpx-vp9",
                                  "vp8_ogg_damaged_frame": "libvpx",
                                  "mpeg4_avi_damaged_frame": "mpeg4"}[factory.__name__],
                           container_format={"h264_damaged_nal": "mp4", "vp9_webm_damaged_frame": "webm",
                                             "vp8_ogg_damaged_frame": "ogg",
                                             "mpeg4_avi_damaged_frame": "avi"}[factory.__name__])
    ref = decode_video(clean, 32).frames
    good = mf.damaged_packet_index(n) - 2  # x264's B-frames reorder a couple of frames around the damage
    np.testing.assert_array_equal(out.frames[:good], ref[:good])


def test_a_file_whose_keyframe_page_is_damaged_is_unusable_with_a_reason(tmp_path: Path):
    with pytest.raises(VideoDecodeError, match=r"no decodable frames \(\d+ damaged packets\)"):
        decode_video(mf.ogg_damaged_page(tmp_path / "page.ogv"), 32)


@pytest.mark.parametrize("fps", [10, 25, 40])
def test_streaming_resampler_matches_the_whole_video_rule(tmp_path: Path, fps):
    """The streaming resampler (one frame held) picks, for each tick t0 + k/fps, the latest frame whose
    timestamp is <= the tick, up to one native period after the last frame: the rule computed here on
    the whole list of timestamps."""
    path = mf.vfr_mp4(tmp_path / "vfr.mp4", n_frames=12)
    native = decode_video(path, 32).frames
    with av.open(str(path)) as c:
        times = np.array([float(f.time) for f in c.decode(video=0)])
        native_fps = float(c.streams.video[0].average_rate)
    end = times[-1] + 1.0 / native_fps
    ticks = times[0] + np.arange(int(np.floor((end - times[0]) * fps + 1e-6))) / fps
    expected = native[np.searchsorted(times, ticks + 1e-9, side="right") - 1]
    with VideoStream(path, 32, fps=fps) as stream:
        frames = np.stack(list(stream))
    np.testing.assert_array_equal(frames, expected)
    assert stream.fps == fps
