"""Reconstruction previews: side-by-side real | reconstruction as MP4 and GIF, and a PNG frame grid."""

from __future__ import annotations

import io
import os
from pathlib import Path

import av
import numpy as np
from PIL import Image

from components.io import atomic_open, atomic_write_bytes


def side_by_side(real: np.ndarray, recon: np.ndarray, gap: int = 2) -> np.ndarray:
    """[T, H, W, 3] uint8 pair -> [T, H, 2W + gap, 3] with a white separator."""
    t, h, w, c = real.shape
    out = np.full((t, h, 2 * w + gap, c), 255, np.uint8)
    out[:, :, :w] = real
    out[:, :, w + gap:] = recon
    return out


def write_mp4(path: str | os.PathLike, frames: np.ndarray, fps: float = 25.0) -> None:
    """H.264 MP4 (yuv420p needs even sizes: frames are padded by one pixel where needed)."""
    t, h, w, _ = frames.shape
    ph, pw = h + h % 2, w + w % 2
    if (ph, pw) != (h, w):
        frames = np.pad(frames, ((0, 0), (0, ph - h), (0, pw - w), (0, 0)), mode="edge")
    with atomic_open(path, "wb") as f:
        with av.open(f, mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=int(round(fps)))
            stream.width, stream.height, stream.pix_fmt = pw, ph, "yuv420p"
            stream.options = {"crf": "18"}
            for img in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)


def write_gif(path: str | os.PathLike, frames: np.ndarray, fps: float = 25.0) -> None:
    images = [Image.fromarray(f) for f in frames]
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:],
                   duration=max(20, int(round(1000 / fps))), loop=0)
    atomic_write_bytes(path, buf.getvalue())


def frame_grid(real: np.ndarray, recon: np.ndarray, n: int = 6, gap: int = 2) -> np.ndarray:
    """Two rows (real, reconstruction) of `n` evenly spaced frames."""
    idx = np.linspace(0, len(real) - 1, num=min(n, len(real))).round().astype(int)
    _, h, w, c = real.shape
    grid = np.full((2 * h + gap, len(idx) * (w + gap) - gap, c), 255, np.uint8)
    for j, i in enumerate(idx):
        grid[:h, j * (w + gap):j * (w + gap) + w] = real[i]
        grid[h + gap:, j * (w + gap):j * (w + gap) + w] = recon[i]
    return grid


def write_png(path: str | os.PathLike, image: np.ndarray) -> None:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def write_previews(folder: str | os.PathLike, name: str, real: np.ndarray, recon: np.ndarray,
                   fps: float = 25.0) -> list[Path]:
    """`<name>.mp4`, `<name>.gif` (real | recon side by side) and `<name>_grid.png` in `folder`."""
    folder = Path(folder)
    both = side_by_side(real, recon)
    paths = [folder / f"{name}.mp4", folder / f"{name}.gif", folder / f"{name}_grid.png"]
    write_mp4(paths[0], both, fps)
    write_gif(paths[1], both, fps)
    write_png(paths[2], frame_grid(real, recon))
    return paths
