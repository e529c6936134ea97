"""Video files and frame folders: reading frames, writing frames, assembling a video.

The only module of the video package that touches files. PyAV (the ``[video]`` extra) is
imported inside the functions that need it, so a frame folder in and out works without it,
and a missing extra is one line with exit code 10, not a traceback.

A video is read at the stylization size straight from the decoder (swscale's area filter),
so a 4K clip never exists in memory as full-size float frames. Output videos are written
to a temporary file beside the target and renamed when complete: a half-written video is
never left under the requested name.

Phones store most clips landscape and say in a display matrix (the stream's side data) how
to turn them for showing: a portrait clip is 1920x1080 pixels with a quarter turn. The
turn is applied on decode, so frames are stylized as they are seen, and the output video
is written upright with no display matrix: every player shows it the same way, and a
portrait clip stays portrait.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ImageError, MissingDependencyError, OutputError
from ..runtime.image_io import DEFAULT_MAX_PIXELS, load_image, probe_image, resize_to

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
# Video encoders per container, best first; the first one this FFmpeg build has is used.
# libx264 and aac are in PyAV's wheels (docs/video.md lists av.codecs_available).
_H264 = ("libx264", "h264", "mpeg4")
VIDEO_ENCODERS: dict[str, tuple[str, ...]] = {
    ".mp4": _H264, ".m4v": _H264, ".mov": _H264, ".mkv": _H264, ".avi": ("mpeg4", "libx264"), ".webm": ("libvpx-vp9", "libvpx")
}
# The audio encoder for a container when the input's audio cannot be copied as it is.
AUDIO_ENCODERS: dict[str, str] = {".mp4": "aac", ".m4v": "aac", ".mov": "aac", ".mkv": "aac", ".avi": "libmp3lame", ".webm": "libopus"}
# Audio codecs each container takes as they are (copied losslessly); None: any.
AUDIO_COPYABLE: dict[str, frozenset[str] | None] = {
    ".mp4": frozenset({"aac", "mp3", "alac", "opus"}),
    ".m4v": frozenset({"aac", "mp3", "alac"}),
    ".mov": frozenset({"aac", "mp3", "alac", "pcm_s16le", "pcm_s24le"}),
    ".mkv": None,
    ".avi": frozenset({"mp3", "pcm_s16le", "ac3"}),
    ".webm": frozenset({"opus", "vorbis"}),
}
FRAME_NAME = "frame_{:06d}.png"
_FRAME_RE = re.compile(r"^frame_(\d{6})\.png$")


# x264's constant rate factor: 18 is visually lossless for most material; stylized
# frames have fine brush texture that lower quality smears.
CRF = 18
# yuv420p: what every player and browser decodes (it needs even width and height).
PIX_FMT = "yuv420p"


@dataclass(frozen=True)
class VideoInfo:
    """What the input is: its frame rate, size and frame count, and whether it has audio."""

    path: Path
    fps: Fraction
    frames: int  # 0 when the container does not say
    width: int
    height: int
    audio: bool
    folder: bool
    # Quarter turns counter-clockwise (0-3) that show the decoded frames upright; width and
    # height above are already those of the upright frames.
    turns: int = 0


def _av() -> Any:
    try:
        import av
    except ImportError:
        raise MissingDependencyError("video files need PyAV: pip install 'onnxstyle[video]' (or give folders of frames)") from None
    return av


def is_video_file(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_ENCODERS


def frame_files(folder: Path) -> list[Path]:
    """The images of a folder in natural order (frame2 before frame10), hidden files skipped."""

    def key(p: Path) -> list[Any]:
        return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name.lower())]

    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")]
    return sorted(files, key=key)


def probe(path: Path, folder_fps: Fraction = Fraction(25), max_pixels: int = DEFAULT_MAX_PIXELS) -> VideoInfo:
    """Frame rate, size, frame count and audio of a video file or a folder of frames.

    A folder has no frame rate of its own: ``folder_fps`` is used (the ``--fps`` option)."""
    if path.is_dir():
        files = frame_files(path)
        if not files:
            raise ImageError(f"{path}: no frames (images named in order, e.g. frame_0001.png)")
        h, w = probe_image(files[0], max_pixels).oriented
        return VideoInfo(path, Fraction(folder_fps), len(files), w, h, False, True)
    if not path.is_file():
        raise ImageError(f"{path}: no such video file or folder of frames")
    av = _av()
    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                raise ImageError(f"{path}: has no video stream")
            v = c.streams.video[0]
            fps = v.average_rate or v.guessed_rate or v.base_rate
            frames = v.frames or (round(float(c.duration / 1e6 * fps)) if c.duration and fps else 0)
            cc = v.codec_context
            turns = _turns(next(c.decode(v), None))
            w, h = (cc.height, cc.width) if turns % 2 else (cc.width, cc.height)
            info = VideoInfo(path, Fraction(fps or 25), int(frames), w, h, bool(c.streams.audio), False, turns)
    except av.error.FFmpegError as e:
        raise ImageError(f"{path}: not a video onnxstyle can read ({e})") from None
    if info.width * info.height > max_pixels:
        raise ImageError(f"{path}: {info.width}x{info.height} frames are over the --max-pixels limit")
    return info


def read_frames(info: VideoInfo, height: int, width: int, start: int = 0, max_pixels: int = DEFAULT_MAX_PIXELS) -> Iterator[np.ndarray]:
    """Frames ``start``, ``start``+1, … as RGB float32 HxWx3 in [0,1] at (height, width)."""
    if info.folder:
        for p in frame_files(info.path)[start:]:
            rgb, _ = load_image(p, max(height, width), max_pixels)
            yield resize_to(rgb, height, width)
        return
    av = _av()
    try:
        with av.open(str(info.path)) as c:
            stream = c.streams.video[0]
            stream.thread_type = "AUTO"  # frame threads: decoding stays far below the optimization's cost
            # A quarter turn swaps the sides: scale to the stored frame's shape, then turn.
            h, w = (width, height) if info.turns % 2 else (height, width)
            for i, frame in enumerate(c.decode(stream)):
                if i < start:
                    continue
                rgb = frame.to_ndarray(width=w, height=h, format="rgb24", interpolation="AREA")
                # One copy, contiguous (a turned view is not; astype would keep its strides).
                yield np.ascontiguousarray(np.rot90(rgb, info.turns), dtype=np.float32) / np.float32(255.0)
    except av.error.FFmpegError as e:
        raise ImageError(f"{info.path}: decoding failed ({e})") from None


def _turns(frame: Any) -> int:
    """Quarter turns counter-clockwise (0-3) that show a decoded frame upright, from its
    display matrix; a rotation between quarter turns (never made by a camera) is rounded."""
    if frame is None:
        return 0
    degrees = getattr(frame, "rotation", None)  # recent PyAV; older ones have the side data only
    if degrees is None:
        degrees = _matrix_degrees(frame)
    return round(degrees / 90) % 4


def _matrix_degrees(frame: Any) -> float:
    """The counter-clockwise rotation of a frame's DISPLAYMATRIX side data, as FFmpeg's
    av_display_rotation_get computes it (nine 16.16 fixed-point int32s, row-major)."""
    try:
        sd = frame.side_data.get("DISPLAYMATRIX")
    except (AttributeError, KeyError, ValueError):
        return 0.0
    if sd is None:
        return 0.0
    m = np.frombuffer(bytes(sd), dtype=np.int32, count=9).astype(np.float64)
    s0, s1 = np.hypot(m[0], m[3]), np.hypot(m[1], m[4])
    if s0 == 0 or s1 == 0:
        return 0.0
    return -float(np.degrees(np.arctan2(m[1] / s1, m[0] / s0)))


def frame_path(folder: Path, index: int) -> Path:
    return folder / FRAME_NAME.format(index)


def done_frames(folder: Path) -> list[int]:
    """Indices of the frames written whole to a work folder (writes are atomic: a file there is complete)."""
    if not folder.is_dir():
        return []
    return sorted(int(m.group(1)) for p in folder.iterdir() if (m := _FRAME_RE.match(p.name)))


def read_frame(folder: Path, index: int) -> np.ndarray:
    return load_image(frame_path(folder, index))[0]


def _first_encoder(av: Any, names: tuple[str, ...]) -> str:
    for name in names:
        try:
            av.codec.Codec(name, "w")
            return name
        except (av.error.FFmpegError, ValueError):  # UnknownCodecError is a ValueError
            continue
    raise OutputError(f"none of the encoders {', '.join(names)} is in this PyAV build")


def _video_stream(av: Any, out: Any, suffix: str, fps: Fraction, height: int, width: int) -> Any:
    codec = _first_encoder(av, VIDEO_ENCODERS[suffix])
    stream = out.add_stream(codec, rate=fps)
    stream.width, stream.height, stream.pix_fmt = width, height, PIX_FMT
    if codec in ("libx264", "libvpx-vp9"):
        stream.options = {"crf": str(CRF)} if codec == "libx264" else {"crf": str(CRF + 12), "b": "0"}
    return stream


def _audio(av: Any, src: Any, out: Any, suffix: str, seconds: float) -> Iterator[tuple[float, list[Any]]]:
    """Add an audio stream to ``out`` and yield (time, packets) up to ``seconds``: packets
    copied as they are where the container takes the codec (lossless), else re-encoded."""
    a = src.streams.audio[0]
    allowed = AUDIO_COPYABLE.get(suffix)
    if allowed is None or a.codec_context.name in allowed:
        add = getattr(out, "add_stream_from_template", None)  # PyAV ≥ 14; older: template=
        dst = add(a) if add else out.add_stream(template=a)
        return _copied(src, a, dst, seconds)
    dst = out.add_stream(AUDIO_ENCODERS[suffix], rate=a.codec_context.sample_rate)
    return _encoded(av, src, a, dst, seconds)


def _copied(src: Any, a: Any, dst: Any, seconds: float) -> Iterator[tuple[float, list[Any]]]:
    for packet in src.demux(a):
        if packet.dts is None:  # the demuxer's flush packet
            continue
        t = float(packet.pts * a.time_base) if packet.pts is not None else 0.0
        if t >= seconds:
            break
        packet.stream = dst  # the muxer rescales its timestamps to the new stream's time base
        yield t, [packet]


def _encoded(av: Any, src: Any, a: Any, dst: Any, seconds: float) -> Iterator[tuple[float, list[Any]]]:
    cc = dst.codec_context
    resampler = av.AudioResampler(format=cc.format, layout=cc.layout, rate=cc.sample_rate)
    for frame in src.decode(a):
        t = float(frame.time or 0.0)
        if t >= seconds:
            break
        yield t, [p for f in resampler.resample(frame) for p in dst.encode(f)]
    yield seconds, [p for f in resampler.resample(None) for p in dst.encode(f)] + list(dst.encode(None))


def write_video(
    frames_folder: Path, count: int, output: Path, fps: Fraction, audio_from: Path | None = None
) -> None:
    """Encode frames 0 … count-1 of a work folder into ``output`` at ``fps``, with the audio
    of ``audio_from`` (cut to the video's length) when it has any; atomic. The frames are
    upright (the input's display matrix was applied on decode), so none is written."""
    av = _av()
    suffix = output.suffix.lower()
    first = read_frame(frames_folder, 0)
    height, width = first.shape[:2]
    fd, tmp_name = tempfile.mkstemp(prefix=f".{output.stem}.", suffix=f".partial{suffix}", dir=output.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    src = None
    try:
        src = av.open(str(audio_from)) if audio_from is not None else None
        with av.open(str(tmp), "w") as out:
            vs = _video_stream(av, out, suffix, fps, height, width)
            audio = _audio(av, src, out, suffix, float(count / fps)) if src is not None and src.streams.audio else iter(())
            pending: tuple[float, list[Any]] | None = next(audio, None)
            for i in range(count):
                # Interleave: the audio up to this frame's end goes in before the next frame.
                while pending is not None and pending[0] < (i + 1) / fps:
                    out.mux(pending[1])
                    pending = next(audio, None)
                rgb = first if i == 0 else read_frame(frames_folder, i)
                frame = av.VideoFrame.from_ndarray(np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8), format="rgb24")
                frame.pts, frame.time_base = i, 1 / fps
                out.mux(vs.encode(frame))
            out.mux(vs.encode(None))
            while pending is not None:
                out.mux(pending[1])
                pending = next(audio, None)
        os.replace(tmp, output)
    except av.error.FFmpegError as e:
        raise OutputError(f"{output}: encoding failed ({e})") from None
    finally:
        if src is not None:
            src.close()
        tmp.unlink(missing_ok=True)


def even_size(height: int, width: int) -> tuple[int, int]:
    """The largest even size within (height, width): yuv420p video needs even dimensions."""
    return max(2, height - height % 2), max(2, width - width % 2)
