"""Synthetic clips with known content and motion for the video tests (PyAV writes them)."""

from __future__ import annotations

import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np


def texture(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth random colour texture (RGB float32 in [0,1]): flow has detail everywhere to lock on."""
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.random((height, width, 3)).astype(np.float32), (0, 0), 1.5)
    return (img - img.min()) / (img.max() - img.min())


def pan(
    source: np.ndarray, frames: int, height: int, width: int, step: tuple[int, int], origin: tuple[int, int] = (0, 0)
) -> list[np.ndarray]:
    """A camera pan over ``source``: frame t is the window at origin + t·step, step = (dx, dy).
    Frame t at p then shows frame t-1 at p + step: the backward flow is ``step`` everywhere,
    and the band of width |dx| (height |dy|) along the leading edge has no source."""
    x0, y0 = origin
    dx, dy = step
    return [source[y0 + t * dy : y0 + t * dy + height, x0 + t * dx : x0 + t * dx + width].copy() for t in range(frames)]


def write_clip(
    path: Path, frames: list[np.ndarray], fps: Fraction, audio: str | None = None, video_codec: str = "mpeg4", rotation: int = 0
) -> None:
    """A clip of ``frames`` at ``fps`` with, optionally, a 440 Hz tone in ``audio`` codec
    (aac or pcm_s16le), written by PyAV independently of onnxstyle's writer. ``rotation``:
    degrees counter-clockwise in the display matrix, as a phone writes it (the frames are
    stored as given; a player turns them by that much)."""
    import av

    h, w = frames[0].shape[:2]
    with av.open(str(path), "w") as out:
        vs = out.add_stream(video_codec, rate=fps)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        if rotation:
            vs.set_display_matrix(display_matrix(rotation))
        vs.options = {"qscale": "2"} if video_codec == "mpeg4" else {}
        if audio:
            rate = 48000 if audio == "aac" else 16000
            ast = out.add_stream(audio, rate=rate)
            fmt = "fltp" if audio == "aac" else "s16"
            seconds = len(frames) / fps
            n = int(rate * seconds)
            tone = 0.2 * np.sin(2 * np.pi * 440 * np.arange(n) / rate)
            chunk = ast.codec_context.frame_size or 1024
            for start in range(0, n, chunk):
                part = tone[start : start + chunk]
                arr = part[None].astype(np.float32) if fmt == "fltp" else (part * 32767).astype(np.int16)[None]
                frame = av.AudioFrame.from_ndarray(arr, format=fmt, layout="mono")
                frame.sample_rate, frame.pts = rate, start
                out.mux(ast.encode(frame))
            out.mux(ast.encode(None))
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8), format="rgb24")
            frame.pts = i
            out.mux(vs.encode(frame))
        out.mux(vs.encode(None))


def display_matrix(ccw_degrees: int) -> list[int]:
    """The DISPLAYMATRIX side data of a counter-clockwise turn, computed as FFmpeg's
    av_display_rotation_set(m, -ccw_degrees) does (its angle is clockwise; 16.16 fixed
    point, the last entry 2.30), so the tests do not take the convention from PyAV."""
    r = np.radians(ccw_degrees)
    c, s = round(float(np.cos(r)) * 65536), round(float(np.sin(r)) * 65536)
    return [c, -s, 0, s, c, 0, 0, 0, 1 << 30]


def read_clip(path: Path) -> tuple[list[np.ndarray], Fraction, list[str], float]:
    """(frames RGB float32, fps, audio codec names, audio seconds) as PyAV reads them."""
    import av

    with av.open(str(path)) as c:
        v = c.streams.video[0]
        fps = Fraction(v.average_rate)
        codecs = [a.codec_context.name for a in c.streams.audio]
        frames = [f.to_ndarray(format="rgb24").astype(np.float32) / 255 for f in c.decode(video=0)]
    seconds = 0.0
    if codecs:
        with av.open(str(path)) as c:
            samples = sum(f.samples for f in c.decode(audio=0))
            seconds = samples / c.streams.audio[0].codec_context.sample_rate
    return frames, fps, codecs, seconds


def run_cli_without(module: str, argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The CLI in a process where ``module`` (an optional extra) cannot be imported."""
    code = f"import sys\nsys.modules[{module!r}] = None\nsys.argv = {['onnxstyle', *argv]!r}\nfrom onnxstyle.cli import main\nmain()\n"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


def quadrants(height: int, width: int) -> np.ndarray:
    """An upright test card: red, green, blue and white quadrants clockwise from the top left,
    so that any quarter turn or mirror of it is told apart by the colour in each corner."""
    img = np.zeros((height, width, 3), np.float32)
    h, w = height // 2, width // 2
    img[:h, :w] = (1, 0, 0)
    img[:h, w:] = (0, 1, 0)
    img[h:, w:] = (0, 0, 1)
    img[h:, :w] = (1, 1, 1)
    return img


def corner_colours(rgb: np.ndarray) -> list[tuple[int, int, int]]:
    """The mean colour, rounded to 0/1 per channel, of each quadrant's centre, clockwise from the top left."""
    h, w = rgb.shape[:2]
    spots = [(h // 4, w // 4), (h // 4, 3 * w // 4), (3 * h // 4, 3 * w // 4), (3 * h // 4, w // 4)]
    return [tuple(int(v > 0.5) for v in rgb[y - 1 : y + 2, x - 1 : x + 2].reshape(-1, 3).mean(axis=0)) for y, x in spots]
