"""Deterministic synthetic video clips shaped like UCF-101 (T x 240 x 320 x 3, uint8 RGB).

Scenes have natural-image statistics at every scale, so they stay natural after preprocessing
shrinks them to 64 px: a smooth colour layout and a luminance texture with a ~1/f amplitude
spectrum (spectral synthesis), covered by "dead leaves" (soft-edged, textured ellipses and
blobs of power-law sizes; edge blur varies like defocus). Each clip is animated by one motion
family with clearly different dynamics, and every family moves:

- StaticScene: fixed camera, one actor walking a smooth path at 1-3 px/frame;
- SlowPan: sub-pixel camera pan over a larger canvas;
- FastTranslation: 1-2 actors bouncing at 5-12 px/frame over a static background;
- RotateZoom: rotation and/or oscillating zoom about a point (bilinear inverse warp);
- ColorFlicker: a slow actor in a static scene, all under sinusoidal + jumping brightness / hue;
- Occlusion: two actors pass behind a static full-height (or full-width) bar.

Speeds are quoted for a 240-pixel short side and scale with the frame, so small test clips
look like downscaled full-size ones. Pure numpy; every random draw comes from
``np.random.default_rng(seed)`` and none depends on ``n_frames``, so a shorter clip is an exact
prefix of a longer one with the same family and seed.
"""

from __future__ import annotations

import numpy as np

MOTION_FAMILIES: tuple[str, ...] = (
    "StaticScene", "SlowPan", "FastTranslation", "RotateZoom", "ColorFlicker", "Occlusion",
)

_F32 = np.float32
_PAN_HORIZON = 256  # frames of pan travel the canvas is sized for; longer pans ping-pong
_REF = 240  # speeds in px/frame are quoted for a 240-pixel short side and scale with it


def render_clip(family: str, seed: int | tuple[int, ...] | list[int], n_frames: int,
                height: int = 240, width: int = 320) -> np.ndarray:
    """Render a clip as uint8 ``[n_frames, height, width, 3]`` (RGB).

    Same arguments -> same bytes. ``seed`` is anything ``np.random.default_rng`` accepts.
    """
    if family not in MOTION_FAMILIES:
        raise ValueError(f"unknown motion family {family!r}; expected one of {MOTION_FAMILIES}")
    if int(n_frames) < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    if int(height) < 16 or int(width) < 16:
        raise ValueError(f"height and width must be >= 16, got {height}x{width}")
    rng = np.random.default_rng(seed)
    return _RENDERERS[family](rng, int(n_frames), int(height), int(width))


# ----------------------------------------------------------------------------- textures

def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorised HSV in [0, 1] -> RGB in [0, 255], shape (..., 3)."""
    i = np.floor(h * 6.0)
    f = h * 6.0 - i
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    i = i.astype(np.intp) % 6
    r = np.choose(i, [v, q, p, p, t, v])
    g = np.choose(i, [t, v, v, q, p, p])
    b = np.choose(i, [p, p, t, v, v, q])
    return np.stack([r, g, b], -1) * 255.0


def _palette(rng: np.random.Generator, k: int = 6) -> np.ndarray:
    """k colours around a random base hue (analogous + complementary), float32 (k, 3)."""
    offsets = rng.choice([0.0, 0.08, -0.08, 0.5, 1 / 3, -1 / 3], size=k)
    hues = (rng.random() + offsets + rng.normal(0.0, 0.03, k)) % 1.0
    return _hsv_to_rgb(hues, rng.uniform(0.25, 0.95, k), rng.uniform(0.25, 1.0, k)).astype(_F32)


def _pink(rng: np.random.Generator, h: int, w: int, slope: float = 1.0) -> np.ndarray:
    """Zero-mean, unit-std float32 (h, w) field whose amplitude spectrum falls as 1/f**slope.

    slope 1 is the natural-image law; larger slopes give smoother fields (colour layouts).
    """
    f = np.hypot(np.fft.fftfreq(h)[:, None], np.fft.rfftfreq(w)[None, :])
    f[0, 0] = np.inf  # no DC: the mean is set by the caller
    spec = (rng.standard_normal(f.shape) + 1j * rng.standard_normal(f.shape)) / f ** slope
    x = np.fft.irfft2(spec, s=(h, w))
    x -= x.mean()
    return (x / (x.std() + 1e-12)).astype(_F32)


def _colour_layout(rng: np.random.Generator, h: int, w: int, pal: np.ndarray) -> np.ndarray:
    """Smooth regions of three palette colours (soft-max of three 1/f^2 fields), float32 (h, w, 3)."""
    colours = pal[rng.choice(len(pal), 3, replace=False)]
    logits = np.stack([_pink(rng, h, w, 2.0) for _ in range(3)]) * _F32(rng.uniform(1.5, 3.0))
    weights = np.exp(logits - logits.max(0))
    weights /= weights.sum(0)
    return np.einsum("khw,kc->hwc", weights, colours).astype(_F32)


def _leaf(rng: np.random.Generator, pal: np.ndarray, ref: int, lo: float, hi: float):
    """A soft-edged, textured ellipse or wobbly blob with radius log-uniform in [lo, hi] * ref.

    Its edge is a ramp 0.4-3 % of `ref` wide (sharp to defocused). Returns (rgb float32 (s, s, 3),
    alpha float32 (s, s) in [0, 1]) on a square box holding the whole shape.
    """
    a = float(np.exp(rng.uniform(np.log(lo), np.log(hi))) * ref)
    b = a * rng.uniform(0.5, 1.0)
    blur = max(float(np.exp(rng.uniform(np.log(0.004), np.log(0.03))) * ref), 0.5)
    wobble = rng.uniform(0.0, 0.25, 3) * (rng.random() < 0.5)
    phases = rng.uniform(0, 2 * np.pi, 3)
    r = int(np.ceil(a * (1 + wobble.sum()) + blur)) + 1
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1].astype(_F32)
    th = rng.uniform(0, np.pi)
    u = (xx * np.cos(th) + yy * np.sin(th)) / a
    v = (yy * np.cos(th) - xx * np.sin(th)) / b
    ang = np.arctan2(v, u)
    boundary = 1 + sum(wobble[k] * np.cos((k + 2) * ang + phases[k]) for k in range(3))
    ramp = np.clip(0.5 - (np.hypot(u, v) - boundary) * _F32(b / blur), 0, 1)
    alpha = ramp * ramp * (3 - 2 * ramp)
    colour = pal[rng.integers(len(pal))] * _F32(rng.uniform(0.6, 1.3))
    shade = 1 + _F32(rng.uniform(-0.25, 0.25)) * u  # directional shading across the shape
    tex = np.exp(_F32(rng.uniform(0.15, 0.35)) * _pink(rng, 2 * r + 1, 2 * r + 1, rng.uniform(1.0, 1.4)))
    return (colour * (shade * tex)[..., None]).astype(_F32), alpha.astype(_F32)


def _paste(dst: np.ndarray, rgb: np.ndarray, alpha: np.ndarray, y: int, x: int) -> None:
    """In-place alpha blend of a sprite with top-left (y, x), clipped to dst's bounds.

    dst is float32 or uint8 (then blended in float and rounded back).
    """
    h, w = alpha.shape
    y0, x0 = max(y, 0), max(x, 0)
    y1, x1 = min(y + h, dst.shape[0]), min(x + w, dst.shape[1])
    if y0 < y1 and x0 < x1:
        a = alpha[y0 - y:y1 - y, x0 - x:x1 - x, None]
        region = dst[y0:y1, x0:x1].astype(_F32)
        region += (rgb[y0 - y:y1 - y, x0 - x:x1 - x] - region) * a
        dst[y0:y1, x0:x1] = _to_u8(region) if dst.dtype == np.uint8 else region


def _scene(rng: np.random.Generator, h: int, w: int, pal: np.ndarray, frame_hw: tuple[int, int]):
    """Textured canvas float32 (h, w, 3): colour layout x 1/f luminance texture under dead leaves
    whose count follows the canvas area and whose sizes follow the frame size."""
    ref = min(frame_hw)
    img = _colour_layout(rng, h, w, pal)
    img *= np.exp(_F32(rng.uniform(0.2, 0.4)) * _pink(rng, h, w, 1.0))[..., None]
    n_leaves = int(round(rng.integers(10, 21) * h * w / (frame_hw[0] * frame_hw[1])))
    for _ in range(n_leaves):
        rgb, alpha = _leaf(rng, pal, ref, 0.03, 0.25)
        s = alpha.shape[0]
        _paste(img, rgb, alpha, int(rng.integers(-s // 2, h - s // 2)), int(rng.integers(-s // 2, w - s // 2)))
    return img


def _to_u8(x: np.ndarray) -> np.ndarray:
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)  # +0.5 then truncate == round


def _bounce(p0: float, v: float, t: np.ndarray, hi: float) -> np.ndarray:
    """Positions p0 + v*t reflected into [0, hi] (triangle wave), i.e. bouncing off borders."""
    if hi <= 0:
        return np.zeros_like(t, dtype=np.float64)
    x = np.mod(p0 + v * t, 2 * hi)
    return hi - np.abs(x - hi)


# ----------------------------------------------------------------------------- families

def _wander(rng, n: int, hi: float, speed: float) -> np.ndarray:
    """Positions in [0, hi] along a sinusoid whose peak speed is about `speed` px/frame."""
    if hi <= 0:
        return np.zeros(n)
    amp = rng.uniform(0.3, 0.5) * hi
    omega = min(speed / amp, 0.5) * rng.uniform(0.6, 1.0)
    return hi / 2 + amp * np.sin(omega * np.arange(n) + rng.uniform(0, 2 * np.pi))


def _actors_over(bg: np.ndarray, actors, tracks) -> np.ndarray:
    """Composite actors [(rgb, alpha)] at per-frame top-left positions [(ys, xs)] over a static
    uint8 background; returns the clip."""
    n = len(tracks[0][0]) if tracks else 1
    out = np.empty((n, *bg.shape), np.uint8)
    for i in range(n):
        out[i] = bg
        for (rgb, alpha), (ys, xs) in zip(actors, tracks):
            _paste(out[i], rgb, alpha, int(np.rint(ys[i])), int(np.rint(xs[i])))
    return out


def _walking_actor(rng, n, h, w, pal):
    """One actor following a smooth path at 1-3 px/frame: (actor, track)."""
    ref = min(h, w)
    actor = _leaf(rng, pal, ref, 0.1, 0.2)
    s = actor[1].shape[0]
    speed = rng.uniform(1, 3) * ref / _REF
    return actor, (_wander(rng, n, h - s, speed), _wander(rng, n, w - s, speed))


def _static(rng, n, h, w):
    # Fixed camera over a still scene; one actor moves, as in UCF-101's near-static clips.
    pal = _palette(rng)
    bg = _to_u8(_scene(rng, h, w, pal, (h, w)))
    actor, track = _walking_actor(rng, n, h, w, pal)
    return _actors_over(bg, [actor], [track])


def _slow_pan(rng, n, h, w):
    # Camera window slides over a larger canvas; a constant sub-pixel offset per frame means
    # bilinear sampling reduces to a weighted sum of four shifted slices (no gather needed).
    pal = _palette(rng)
    speed, ang = rng.uniform(0.3, 1.0) * min(h, w) / _REF, rng.uniform(0, 2 * np.pi)
    vy, vx = speed * np.sin(ang), speed * np.cos(ang)
    my, mx = (int(np.ceil(abs(c) * _PAN_HORIZON)) + 2 for c in (vy, vx))
    canvas = _scene(rng, h + my, w + mx, pal, (h, w))
    t = np.arange(n)
    oys = _bounce(0.0 if vy >= 0 else my - 2, vy, t, my - 2)
    oxs = _bounce(0.0 if vx >= 0 else mx - 2, vx, t, mx - 2)
    out = np.empty((n, h, w, 3), np.uint8)
    for i, (oy, ox) in enumerate(zip(oys, oxs)):
        y, x = int(oy), int(ox)
        fy, fx = _F32(oy - y), _F32(ox - x)
        win = canvas[y:y + h + 1, x:x + w + 1]  # window plus one extra row and column
        row = win[:, :-1] * (1 - fx) + win[:, 1:] * fx
        out[i] = _to_u8(row[:-1] * (1 - fy) + row[1:] * fy)
    return out


def _bouncing(rng, n, h, w, actors, velocities):
    """Tracks of actors moving at (vy, vx) px/frame and bouncing off the borders."""
    t = np.arange(n)
    tracks = []
    for (_, alpha), (vy, vx) in zip(actors, velocities):
        s = alpha.shape[0]
        tracks.append((_bounce(rng.uniform(0, max(h - s, 0)), vy, t, h - s),
                       _bounce(rng.uniform(0, max(w - s, 0)), vx, t, w - s)))
    return tracks


def _fast_translation(rng, n, h, w):
    pal, ref = _palette(rng), min(h, w)
    bg = _to_u8(_scene(rng, h, w, pal, (h, w)))
    k = int(rng.integers(1, 3))
    actors = [_leaf(rng, pal, ref, 0.15, 0.24) for _ in range(k)]
    speed, ang = rng.uniform(5, 12, k) * ref / _REF, rng.uniform(0, 2 * np.pi, k)
    return _actors_over(bg, actors, _bouncing(rng, n, h, w, actors, zip(speed * np.sin(ang), speed * np.cos(ang))))


def _occlusion(rng, n, h, w):
    # Render in a transposed frame half the time so the occluder is either vertical or horizontal.
    if rng.random() < 0.5:
        return np.ascontiguousarray(_occlusion_vertical(rng, n, w, h).transpose(0, 2, 1, 3))
    return _occlusion_vertical(rng, n, h, w)


def _occlusion_vertical(rng, n, h, w):
    """Two actors drift mostly horizontally and pass behind a full-height textured bar."""
    pal, ref = _palette(rng), min(h, w)
    bg = _to_u8(_scene(rng, h, w, pal, (h, w)))
    actors = [_leaf(rng, pal, ref, 0.11, 0.18) for _ in range(2)]
    extent = max(np.ptp(np.flatnonzero((a > 0.5).any(0))) + 1 for _, a in actors)
    bw = min(int(extent) + max(2, ref // 30), w // 2)  # wide enough to hide an actor fully
    bx = int(np.clip(rng.uniform(0.35, 0.65) * w - bw / 2, 0, w - bw))
    colour = pal[rng.integers(len(pal))]
    bar = colour * np.exp(_F32(0.3) * _pink(rng, h, bw, 1.0))[..., None]
    across = np.minimum(np.arange(bw) + 0.5, bw - 0.5 - np.arange(bw)) / max(1.0, bw / 6)
    bar *= (0.4 + 0.6 * np.clip(across, 0, 1)).astype(_F32)[None, :, None]  # shaded rounded edges
    speed = rng.uniform(4, 8, 2) * rng.choice([-1, 1], 2) * ref / _REF
    drift = rng.uniform(-0.5, 0.5, 2) * ref / _REF
    out = _actors_over(bg, actors, _bouncing(rng, n, h, w, actors, zip(drift, speed)))
    out[:, :, bx:bx + bw] = _to_u8(bar)  # the occluder is drawn last, on top of everything
    return out


def _rotate_zoom(rng, n, h, w):
    # Inverse-map every output pixel into a square canvas large enough for any rotation at the
    # smallest zoom, so (almost) no sample falls outside; the rest are clamped to the border.
    pal = _palette(rng)
    mode = int(rng.integers(3))  # 0: rotate, 1: zoom, 2: both
    omega = np.deg2rad(rng.uniform(0.5, 2.0)) * rng.choice([-1, 1]) * (mode != 1)
    rate, period = rng.uniform(0.003, 0.01) * (mode != 0), rng.uniform(40, 120)
    amp = min(rate * period / (2 * np.pi), 0.2)  # zoom speed peaks at `rate` per frame
    th0, ph = rng.uniform(0, 2 * np.pi), rng.uniform(0, 2 * np.pi)
    cy, cx = h * rng.uniform(0.35, 0.65), w * rng.uniform(0.35, 0.65)
    d = int(np.ceil(2 * np.hypot(max(cy, h - cy), max(cx, w - cx)) / (1 - amp))) + 4
    canvas = _pack_rgb(_to_u8(_scene(rng, d, d, pal, (h, w))))
    yy, xx = np.mgrid[0:h, 0:w].astype(_F32)
    dy, dx = yy - _F32(cy), xx - _F32(cx)
    out = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        th, z = th0 + omega * i, 1 + amp * np.sin(2 * np.pi * i / period + ph)
        c, s = _F32(np.cos(th) / z), _F32(np.sin(th) / z)
        sy, sx = c * dy - s * dx + _F32(d / 2), c * dx + s * dy + _F32(d / 2)
        _bilinear(canvas, d, d, sy, sx, out[i])
    return out


# Warps work on RGB packed into 16-bit lanes of a uint64, one lane per channel: a single gather
# fetches a whole pixel and one integer multiply-add interpolates all three channels at once.
_LANES = np.uint64(0x000000FF00FF00FF)
_HALF = np.uint64(0x0000008000800080)  # +0.5 in each lane for rounding


def _pack_rgb(img: np.ndarray) -> np.ndarray:
    """uint8 (h, w, 3) -> flat uint64 (h*w,) with channel c in bits [16c, 16c + 8)."""
    x = img.reshape(-1, 3).astype(np.uint64)
    return x[:, 0] | (x[:, 1] << np.uint64(16)) | (x[:, 2] << np.uint64(32))


def _lerp_packed(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Per-lane round((a * (256 - t) + b * t) / 256) for t in [0, 256]; lanes cannot overflow."""
    return ((a * (256 - t) + b * t + _HALF) >> np.uint64(8)) & _LANES


def _bilinear(packed: np.ndarray, hh: int, ww: int, y: np.ndarray, x: np.ndarray,
              out: np.ndarray) -> None:
    """Bilinear sample of a packed (hh*ww,) image at float32 coords into uint8 out (h, w, 3).

    Coordinates are clamped, i.e. samples outside the image take the border colour.
    """
    y = np.clip(y, 0, _F32(hh - 1.001))
    x = np.clip(x, 0, _F32(ww - 1.001))
    y0, x0 = np.floor(y), np.floor(x)
    ty = ((y - y0) * 256 + 0.5).astype(np.uint64)  # 8-bit fixed-point weights
    tx = ((x - x0) * 256 + 0.5).astype(np.uint64)
    idx = y0.astype(np.intp) * ww + x0.astype(np.intp)
    top = _lerp_packed(packed[idx], packed[idx + 1], tx)
    bot = _lerp_packed(packed[idx + ww], packed[idx + ww + 1], tx)
    v = _lerp_packed(top, bot, ty)
    for c in range(3):
        out[..., c] = (v >> np.uint64(16 * c)).astype(np.uint8)  # low byte of the lane


def _color_flicker(rng, n, h, w):
    # Per-frame 3x3 colour matrix = brightness * hue rotation about the grey axis; both have a
    # sinusoidal part plus piecewise-constant levels that jump at a few random frames.
    pal = _palette(rng)
    bg = _to_u8(_scene(rng, h, w, pal, (h, w)))
    actor, track = _walking_actor(rng, n, h, w, pal)
    b_amp, b_per, b_ph = rng.uniform(0.2, 0.35), rng.uniform(8, 30), rng.uniform(0, 2 * np.pi)
    h_amp, h_per, h_ph = rng.uniform(0.15, 0.5), rng.uniform(10, 40), rng.uniform(0, 2 * np.pi)
    jumps = np.cumsum(rng.integers(10, 40, 64))  # fixed count keeps clips prefix-consistent
    b_lvl = np.concatenate([[1.0], rng.uniform(0.7, 1.25, 64)])
    h_lvl = np.concatenate([[0.0], rng.uniform(-1.2, 1.2, 64)])
    k = np.full((3, 1), 1 / np.sqrt(3))
    cross = np.array([[0, -1, 1], [1, 0, -1], [-1, 1, 0]]) / np.sqrt(3)
    clip = _actors_over(bg, [actor], [track])
    out = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        scene = np.ascontiguousarray(clip[i].transpose(2, 0, 1), dtype=_F32)  # planar
        seg = np.searchsorted(jumps, i, side="right")
        th = h_lvl[seg] + h_amp * np.sin(2 * np.pi * i / h_per + h_ph)
        rot = np.cos(th) * np.eye(3) + np.sin(th) * cross + (1 - np.cos(th)) * (k @ k.T)
        m = (b_lvl[seg] * (1 + b_amp * np.sin(2 * np.pi * i / b_per + b_ph)) * rot).astype(_F32)
        for c in range(3):  # explicit sums on planar data: fast, and no BLAS threading
            out[i, ..., c] = _to_u8(m[c, 0] * scene[0] + m[c, 1] * scene[1] + m[c, 2] * scene[2])
    return out


_RENDERERS = {
    "StaticScene": _static, "SlowPan": _slow_pan, "FastTranslation": _fast_translation,
    "RotateZoom": _rotate_zoom, "ColorFlicker": _color_flicker, "Occlusion": _occlusion,
}
