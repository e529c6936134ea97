"""Video: the temporal term's gradient, optical flow on known motion, video I/O, the command
end to end with Ctrl-C and resume, and the chunk plan of ``video --ray``."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import DATA, cli_env
from video_helpers import corner_colours, pan, quadrants, read_clip, run_cli_without, texture, write_clip

from onnxstyle.runtime.engine import Engine
from onnxstyle.runtime.image_io import load_image, resize_to, save_image, to_nchw
from onnxstyle.runtime.settings import EngineConfig
from onnxstyle.video import io as vio
from onnxstyle.video.chunks import ChunkPlan, blend, chunk_ranges, covering
from onnxstyle.video.flow import motion, warp
from onnxstyle.video.metrics import clip_warping_errors


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "onnxstyle.cli", *args]


# ---- the temporal term of the exported loss --------------------------------------------------
def test_temporal_gradient_matches_autograd(caffe_export: Path) -> None:
    """loss_grad with the temporal inputs minus without them is exactly the gradient of
    w·Σ c·(x−ω)² / (3·H·W) (Ruder 2016), computed here by torch autograd, at an odd size."""
    engine = Engine(caffe_export, EngineConfig(device="cpu"))  # fp32: the comparison is exact
    h, w = 29, 37
    rng = np.random.default_rng(0)
    content = to_nchw(resize_to(load_image(DATA / "tubingen.png")[0], h, w))
    style = to_nchw(resize_to(load_image(DATA / "starry_night.png")[0], h, w))
    feats_c, feats_s = engine.features(content), engine.features(style)
    targets = {k: v for k, v in feats_c.items() if k.startswith("content_")}
    targets.update({k: v for k, v in feats_s.items() if k.startswith("gram_")})
    targets["guide"] = np.ones((1, 1, h, w), np.float32)
    x = np.clip(content + rng.normal(0, 0.1, content.shape), 0, 1).astype(np.float32)
    omega = rng.uniform(0, 1, (1, 3, h, w)).astype(np.float32)
    c = (rng.uniform(0, 1, (1, 1, h, w)) > 0.3).astype(np.float32) * rng.uniform(0.2, 1, (1, 1, h, w)).astype(np.float32)
    weight = 250.0

    with_term = engine.loss_grad(x, {**targets, "temporal_target": omega, "temporal_map": c}, {"temporal_weight": weight})
    without = engine.loss_grad(x, {**targets, "temporal_target": omega, "temporal_map": np.zeros_like(c)}, {"temporal_weight": weight})

    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    ref = weight * (torch.tensor(c, dtype=torch.float64) * (xt - torch.tensor(omega, dtype=torch.float64)) ** 2).sum() / (3 * h * w)
    ref.backward()
    grad_ref = xt.grad.numpy()
    diff = with_term.grad - without.grad
    assert np.abs(diff - grad_ref).max() <= 1e-4 * np.abs(grad_ref).max()
    assert with_term.terms["loss_temporal"] == pytest.approx(ref.item(), rel=1e-5)
    assert with_term.loss - without.loss == pytest.approx(ref.item(), rel=1e-4)
    assert without.terms["loss_temporal"] == 0.0


# ---- optical flow and the consistency check on known motion ----------------------------------
@pytest.mark.parametrize("dx,dy", [(3, 2), (-5, 1), (6, -4)])
def test_flow_recovers_a_known_shift_and_marks_the_uncovered_band(dx: int, dy: int) -> None:
    """A camera pan of (dx, dy) px: frame t at p shows frame t-1 at p + (dx, dy), so that is
    the backward flow everywhere; the band along the leading edge has no source."""
    h, w = 72, 96
    prev, cur = pan(texture(120, 160), 2, h, w, (dx, dy), origin=(20, 20))
    m = motion(prev, cur)
    interior = m.backward[8:-8, 8:-8]
    err = np.abs(interior - np.array([dx, dy], np.float32)).max(axis=-1)
    assert np.median(err) < 0.05 and np.percentile(err, 95) < 0.25
    ys, xs = np.mgrid[0:h, 0:w]
    band = (xs + dx < 0) | (xs + dx > w - 1) | (ys + dy < 0) | (ys + dy > h - 1)
    assert band.sum() > 0 and (m.weights[band] == 0).all()
    assert m.weights[~band].mean() > 0.9
    reliable = m.weights > 0
    assert np.abs(warp(prev, m.backward) - cur)[reliable].mean() < 0.01


@pytest.mark.parametrize("d", [4, 5, 7])
def test_consistency_check_marks_the_background_a_moving_square_uncovers(d: int) -> None:
    """A textured square moves d px right over a still background: the strip of background
    it uncovers was hidden in the previous frame (a disocclusion) and must get zero weight,
    while the square's interior and the background far from it stay reliable."""
    h, w = 72, 96
    bg, fg = texture(h, w, 1), texture(40, 40, 2)

    def frame(x: int) -> np.ndarray:
        f = bg.copy()
        f[16:56, x : x + 40] = fg
        return f

    m = motion(frame(20), frame(20 + d))
    assert (m.weights[16:56, 20 : 20 + d] == 0).mean() >= 0.95
    assert m.weights[20:52, 26 + d : 56].mean() == 1.0
    assert np.median(m.backward[20:52, 26 + d : 56], axis=(0, 1)) == pytest.approx([-d, 0], abs=0.05)
    assert m.weights[4:12, 4:-4].mean() > 0.95 and m.weights[-12:-4, 4:-4].mean() > 0.95


# ---- video I/O -----------------------------------------------------------------------------
def test_pyav_wheel_carries_the_codecs_used() -> None:
    import av

    assert {"libx264", "aac", "mpeg4", "libopus"} <= set(av.codecs_available)
    for name in ("libx264", "aac", "libvpx-vp9", "libopus"):
        assert av.codec.Codec(name, "w").is_encoder


@pytest.mark.parametrize(
    "audio,suffix,out_suffix,out_audio",
    [("aac", ".mp4", ".mp4", "aac"), ("pcm_s16le", ".mkv", ".mp4", "aac"), (None, ".mp4", ".webm", None), ("aac", ".mp4", ".mkv", "aac")],
)
def test_video_round_trip_keeps_frames_fps_and_audio(
    tmp_path: Path, audio: str | None, suffix: str, out_suffix: str, out_audio: str | None
) -> None:
    fps = Fraction(30000, 1001)
    source = [resize_to(f, 48, 64) for f in pan(load_image(DATA / "tubingen.png")[0], 7, 60, 80, (2, 1))]
    clip = tmp_path / f"in{suffix}"
    write_clip(clip, source, fps, audio)
    info = vio.probe(clip)
    assert (info.fps, info.frames, info.width, info.height, info.audio) == (fps, 7, 64, 48, audio is not None)
    frames = list(vio.read_frames(info, 48, 64))
    assert len(frames) == 7
    assert np.abs(frames[3] - source[3]).mean() < 0.03
    work = tmp_path / "work"
    work.mkdir()
    for i, f in enumerate(frames):
        save_image(vio.frame_path(work, i), f)
    out = tmp_path / f"out{out_suffix}"
    vio.write_video(work, 7, out, info.fps, clip)
    got, got_fps, codecs, seconds = read_clip(out)
    assert len(got) == 7 and got_fps == fps
    assert np.abs(got[3] - source[3]).mean() < 0.04
    assert codecs == ([out_audio] if out_audio else [])
    if out_audio:
        assert abs(seconds - 7 / fps) < 0.1  # the audio is as long as the video, not lost
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no partial file left


def test_frame_folder_in_natural_order_with_its_fps(tmp_path: Path) -> None:
    frames = pan(texture(60, 90), 11, 40, 48, (3, 0))
    for i, f in enumerate(frames):
        save_image(tmp_path / f"shot{i}.png", f)  # shot10 after shot9, not after shot1
    info = vio.probe(tmp_path, Fraction(12))
    assert (info.frames, info.fps, info.folder, info.audio) == (11, 12, True, False)
    got = list(vio.read_frames(info, 40, 48, start=9))
    assert len(got) == 2 and np.abs(got[1] - frames[10]).max() < 1 / 255 + 1e-6


# Clockwise from the top left, as quadrants() paints the upright card.
UPRIGHT = [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 1)]


def _phone_clip(path: Path, degrees: int, height: int = 48, width: int = 32, frames: int = 3) -> np.ndarray:
    """A portrait card stored turned by ``degrees`` clockwise with a display matrix saying
    ``degrees`` counter-clockwise, as a phone stores a clip; returns the upright card."""
    upright = quadrants(height, width)
    stored = np.rot90(upright, -(degrees // 90))
    write_clip(path, [stored] * frames, Fraction(24), rotation=degrees)
    return upright


@pytest.mark.parametrize("degrees", [90, 180, 270])
def test_a_phone_clip_is_decoded_as_it_is_shown(tmp_path: Path, degrees: int) -> None:
    import av

    clip = tmp_path / f"phone{degrees}.mp4"
    upright = _phone_clip(clip, degrees)
    info = vio.probe(clip)
    assert (info.width, info.height, info.turns, info.frames) == (32, 48, degrees // 90, 3)  # portrait stays portrait
    frames = list(vio.read_frames(info, 48, 32))
    assert len(frames) == 3 and frames[0].shape == (48, 32, 3) and frames[0].flags.c_contiguous
    assert corner_colours(frames[0]) == UPRIGHT
    assert np.abs(frames[2] - upright).mean() < 0.05
    small = next(vio.read_frames(info, 24, 16))  # scaled on decode, then turned
    assert small.shape == (24, 16, 3) and corner_colours(small) == UPRIGHT
    with av.open(str(clip)) as c:  # the fallback for PyAV without frame.rotation reads the same turn
        frame = next(c.decode(video=0))
        assert round(vio._matrix_degrees(frame)) % 360 == frame.rotation % 360 == degrees % 360


# ---- the command -----------------------------------------------------------------------------
@pytest.fixture()
def pan_clip(tmp_path: Path) -> Path:
    clip = tmp_path / "pan.mp4"
    frames = [resize_to(f, 48, 64) for f in pan(load_image(DATA / "tubingen.png")[0], 6, 60, 80, (3, 1))]
    write_clip(clip, frames, Fraction(24), "aac")
    return clip


@pytest.mark.slow
def test_video_command_end_to_end_keeps_fps_and_audio(caffe_export: Path, pan_clip: Path, tmp_path: Path) -> None:
    out = tmp_path / "styled.mp4"
    args = cli("video", str(pan_clip), str(DATA / "starry_night.png"), "-o", str(out), "--size", "64",
               "--iterations", "6", "--models", str(caffe_export), "--device", "cpu", "--threads", "1")
    r = subprocess.run(args, capture_output=True, text=True, env=cli_env(), timeout=300)
    assert r.returncode == 0, r.stderr
    assert "frame 6/6" in r.stderr and "frames/min" in r.stderr
    frames, fps, codecs, seconds = read_clip(out)
    assert len(frames) == 6 and fps == 24 and frames[0].shape == (48, 64, 3)
    assert codecs == ["aac"] and abs(seconds - 6 / 24) < 0.1
    source = [f for f in vio.read_frames(vio.probe(pan_clip), 48, 64)]
    assert np.abs(frames[2] - source[2]).mean() > 0.03  # stylized, not a copy of the input
    assert not (tmp_path / ".styled.mp4.onnxstyle-frames").exists()


@pytest.mark.slow
@pytest.mark.parametrize("degrees", [90, 270])
def test_video_command_writes_a_phone_clip_upright(caffe_export: Path, tmp_path: Path, degrees: int) -> None:
    import av

    clip = tmp_path / "phone.mp4"
    upright = _phone_clip(clip, degrees, 96, 64)
    out = tmp_path / "styled.mp4"
    args = cli("video", str(clip), str(DATA / "starry_night.png"), "-o", str(out), "--size", "48", "--iterations", "2",
               "--later-iterations", "1", "--models", str(caffe_export), "--device", "cpu", "--threads", "1")
    r = subprocess.run(args, capture_output=True, text=True, env=cli_env(), timeout=300, check=False)
    assert r.returncode == 0, r.stderr
    assert "→ 32x48" in r.stderr  # width x height: portrait
    frames, _, _, _ = read_clip(out)
    assert len(frames) == 3 and frames[0].shape == (48, 32, 3)
    with av.open(str(out)) as c:
        assert next(c.decode(video=0)).rotation == 0  # written upright: no display matrix to obey
    card = resize_to(upright, 48, 32)
    # Two evaluations from the content leave the card's layout: closer upright than turned over.
    assert np.abs(frames[0] - card).mean() < np.abs(frames[0] - np.rot90(card, 2)).mean()


def _frames_in(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.glob("frame_*.png")}


@pytest.mark.slow
def test_ctrl_c_keeps_frames_done_and_a_rerun_resumes(caffe_export: Path, pan_clip: Path, tmp_path: Path) -> None:
    out = tmp_path / "frames"
    args = cli("video", str(pan_clip), str(DATA / "starry_night.png"), "-o", str(out), "--size", "48",
               "--iterations", "16", "--models", str(caffe_export), "--device", "cpu", "--threads", "1")
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env())
    deadline = time.monotonic() + 240
    while not out.is_dir() or len(_frames_in(out)) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before two frames were written"
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    kept = _frames_in(out)
    assert 2 <= len(kept) < 6 and "run the same command again to resume" in stderr
    assert sorted(kept) == [f"frame_{i:06d}.png" for i in range(len(kept))]
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # no half-written frame

    other = subprocess.run([*args, "--style-weight", "5"], capture_output=True, text=True, env=cli_env(), timeout=120)
    assert other.returncode == 7 and "--restart" in other.stderr  # never mixes two stylizations

    r = subprocess.run(args, capture_output=True, text=True, env=cli_env(), timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"resuming: {len(kept)} of 6 frames" in r.stderr
    assert f"frame {len(kept)}/6 done" not in r.stderr and "frame 6/6 done" in r.stderr
    after = _frames_in(out)
    assert len(after) == 6 and all(after[name] == mtime for name, mtime in kept.items())  # not redone
    assert json.loads((out / "onnxstyle-video.json").read_text())["fps"] == "24"


@pytest.mark.slow
def test_temporal_consistency_lowers_the_warping_error_of_a_known_pan(caffe_export: Path) -> None:
    """Independent frames flicker; with the warped init and the temporal term, frame t agrees
    with frame t-1 moved by the pan's exact motion (measured with that known flow)."""
    from onnxstyle.runtime.stylizer import Stylizer
    from onnxstyle.runtime.settings import RunSettings
    from onnxstyle.video.flow import inside
    from onnxstyle.video.temporal import VideoSettings, stylize_frames

    step = (3, 1)
    frames = [resize_to(f, 36, 48) for f in pan(load_image(DATA / "tubingen.png")[0], 4, 54, 72, step)]
    # Resized by 2/3: the motion is (2, 2/3) px per frame at 48x36.
    flow = np.broadcast_to(np.array([2.0, 2 / 3], np.float32), (36, 48, 2)).copy()
    exact = [(flow, inside(flow).astype(np.float32))] * 3
    st = Stylizer(caffe_export, EngineConfig(device="cpu", threads=1))
    style = load_image(DATA / "starry_night.png")[0]
    run = RunSettings(size=48, iterations=20, temporal_weight=1e3)
    errors = {}
    for temporal in (False, True):
        given = ((i, f, None) for i, f in enumerate(frames))
        outs = [o for _, o, _ in stylize_frames(st, given, [style], run, VideoSettings(temporal=temporal))]
        errors[temporal] = float(np.mean(clip_warping_errors(frames, outs, exact)))
    assert errors[True] < 0.5 * errors[False], errors


def test_missing_pyav_is_one_line_and_exit_10(caffe_export: Path, tmp_path: Path) -> None:
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"not read: PyAV is missing")
    argv = ["video", str(clip), str(DATA / "starry_night.png"), "-o", str(tmp_path / "o.mp4"), "--models", str(caffe_export)]
    r = run_cli_without("av", argv, cli_env())
    assert r.returncode == 10, r.stderr
    assert r.stderr.strip().count("\n") == 0 and "pip install 'onnxstyle[video]'" in r.stderr


# ---- chunks for video --ray --------------------------------------------------------------------
def test_chunk_plan_covers_every_frame_with_the_overlap_cross_faded() -> None:
    plan = ChunkPlan(length=4, overlap=1)
    assert chunk_ranges(10, plan) == [range(0, 4), range(3, 7), range(6, 10)]
    assert chunk_ranges(11, ChunkPlan(6, 2)) == [range(0, 6), range(4, 10), range(8, 11)]
    chunks = chunk_ranges(12, ChunkPlan(6, 2))
    assert [covering(f, chunks) for f in (3, 4, 5, 6)] == [[0], [0, 1], [0, 1], [1]]
    a, b = np.zeros((2, 2, 3), np.float32), np.ones((2, 2, 3), np.float32)
    # Two shared frames: the later chunk weighs 1/3, then 2/3.
    assert blend(4, chunks, {0: a, 1: b})[0, 0, 0] == pytest.approx(1 / 3)
    assert blend(5, chunks, {0: a, 1: b})[0, 0, 0] == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        ChunkPlan(length=4, overlap=2)
