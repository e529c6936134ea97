"""Video stylization: how stable (warping error, Lai et al. 2018), how stylized (Gram and content
distances) and how fast (frames per minute), with and without temporal consistency.

For each clip every variant starts from the same stylized first frame, then stylizes the
others: *independent* (each frame alone from its own content init, full iterations: the
flickering baseline) and *temporal w* for each temporal weight w (Ruder 2016: warped init and
the temporal term, fewer iterations after the first frame; w = 0 is the warped init alone).
Clips: a synthetic pan over a photo with known motion (its warping error uses the exact flow)
and the two real clips in ../shared/videos (Farnebäck flow for the metric, not the DIS flow
the temporal term is built from). ``--chunks L,O`` also runs the clip in chunks as
``video --ray`` does and measures the warping error at the chunk borders.

    python benchmarks/video.py --strip docs/video      # the full run: about 2 hours on 2 idle cores
    python benchmarks/video.py --quick --out /tmp/v    # smoke run, a minute; its figures mean nothing

Writes <out>/video.json and <out>/video.md; with --strip DIR, a strip of frames per clip.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from onnxstyle.autoexport import resolve_models  # noqa: E402
from onnxstyle.runtime.stylizer import Stylizer  # noqa: E402
from onnxstyle.runtime.image_io import fit_size, from_nchw, load_image, probe_image, write_atomic  # noqa: E402
from onnxstyle.runtime.providers import cpu_model  # noqa: E402
from onnxstyle.runtime.settings import EngineConfig, RunSettings  # noqa: E402
from onnxstyle.exportdir import export_settings_for# noqa: E402
from onnxstyle.video import io as vio  # noqa: E402
from onnxstyle.video.chunks import ChunkPlan, chunk_ranges, stylize_chunked  # noqa: E402
from onnxstyle.video.flow import inside, warp  # noqa: E402
from onnxstyle.video.metrics import clip_warping_errors, metric_motion, style_content_distances  # noqa: E402
from onnxstyle.video.temporal import Previous, VideoSettings, stylize_frames  # noqa: E402

SHARED = ROOT.parent / "shared"
CLIPS = {"pan": None, "carphone": SHARED / "videos" / "carphone_pristine.mp4", "bigbuckbunny": SHARED / "videos" / "bigbuckbunny.mp4"}
PAN_STEP = (4, 1)  # px per frame at the working size: known, whole-pixel motion
TARGETS = {"warp_ratio": 0.5, "gram_ratio": 1.10}  # temporal / independent, on the pan


@dataclass
class Variant:
    name: str
    weight: float | None  # None: independent frames
    outputs: list[np.ndarray] = field(default_factory=list)
    seconds: float = 0.0
    evaluations: int = 0


def pan_clip(frames: int, size: int) -> tuple[list[np.ndarray], list[tuple[np.ndarray, np.ndarray]]]:
    """A pan over the Tübingen photo with exactly PAN_STEP px per frame, and its exact motion."""
    photo = ROOT / "onnxstyle" / "data" / "tubingen.jpg"
    ph, pw = probe_image(photo).oriented
    h, w = fit_size(ph, pw, size)
    dx, dy = PAN_STEP
    # The photo at the smallest scale that holds every window of the pan.
    scale = max((w + dx * (frames - 1)) / pw, (h + dy * (frames - 1)) / ph)
    big = load_image(photo, int(np.ceil(max(ph, pw) * scale)) + 1)[0]
    clip = [big[t * dy : t * dy + h, t * dx : t * dx + w] for t in range(frames)]
    # Frame t at p shows frame t-1 at p + (dx, dy): the backward flow, the same everywhere.
    flow = np.broadcast_to(np.array(PAN_STEP, np.float32), (h, w, 2)).copy()
    return clip, [(flow, inside(flow).astype(np.float32))] * (frames - 1)


def real_clip(path: Path, frames: int, size: int) -> list[np.ndarray]:
    info = vio.probe(path)
    h, w = fit_size(info.height, info.width, size)
    return list(vio.read_frames(info, h, w))[:frames]


def run_variant(st: Stylizer, clip: list[np.ndarray], style: np.ndarray, run: RunSettings, later: int | None,
                first: tuple[np.ndarray, float, int], v: Variant) -> None:
    """Frames 1… of ``clip`` after the shared first frame; fills v.outputs, seconds, evaluations."""
    out0, sec0, ev0 = first
    v.outputs, v.seconds, v.evaluations = [out0], sec0, ev0
    video = VideoSettings(temporal=v.weight is not None, later_iterations=later)
    settings = run if v.weight is None else run.replace(temporal_weight=v.weight)
    given = ((i, clip[i], None) for i in range(1, len(clip)))
    t0 = time.perf_counter()
    for _, out, result in stylize_frames(st, given, [style], settings, video, previous=Previous(clip[0], out0)):
        v.outputs.append(out)
        v.evaluations += result.evaluations
    v.seconds += time.perf_counter() - t0


def measure(st: Stylizer, clip: list[np.ndarray], style: np.ndarray, run: RunSettings, v: Variant,
            motions: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    warps = clip_warping_errors(clip, v.outputs, motions)
    dists = [style_content_distances(st, o, c, [style], run) for o, c in zip(v.outputs, clip, strict=True)]
    return {
        "weight": v.weight,
        "warping_error": float(np.mean(warps)),
        "warping_error_per_pair": warps,
        "gram_distance": float(np.mean([d[0] for d in dists[1:]])),  # frames after the shared first
        "content_distance": float(np.mean([d[1] for d in dists[1:]])),
        "gram_distance_first_frame": dists[0][0],
        "seconds": v.seconds,
        "evaluations": v.evaluations,
        "frames_per_minute": 60.0 * len(v.outputs) / max(v.seconds, 1e-9),
    }


def choose_weight(clips: dict[str, Any], gram_ratio: float) -> float | None:
    """The weight with the lowest mean warping ratio whose Gram distance stays within
    ``gram_ratio`` of independent frames on every clip."""
    weights = sorted({r["weight"] for c in clips.values() for r in c["variants"].values() if r["weight"] is not None})
    ok = [w for w in weights if all(c["variants"][f"temporal {w:g}"]["gram_ratio"] <= gram_ratio for c in clips.values())]
    if not ok:
        return None
    return min(ok, key=lambda w: float(np.mean([c["variants"][f"temporal {w:g}"]["warp_ratio"] for c in clips.values()])))


def chunk_borders(st: Stylizer, clip: list[np.ndarray], style: np.ndarray, run: RunSettings, later: int | None, weight: float,
                  plan: ChunkPlan, motions: list[tuple[np.ndarray, np.ndarray]], sequential: list[float]) -> dict[str, Any]:
    """The clip in chunks, as video --ray runs it: warping error at the pairs that touch a
    chunk border (the overlap and the frame after it) against the same pairs run in one go."""
    t0 = time.perf_counter()
    outs = stylize_chunked(st, clip, [style], run.replace(temporal_weight=weight), VideoSettings(later_iterations=later), plan)
    seconds = time.perf_counter() - t0
    warps = clip_warping_errors(clip, outs, motions)
    chunks = chunk_ranges(len(clip), plan)
    border = sorted({t for c in chunks[1:] for t in range(c.start, c.start + plan.overlap + 1) if 1 <= t < len(clip)})
    inner = [t for t in range(1, len(clip)) if t not in border]
    return {
        "length": plan.length, "overlap": plan.overlap, "weight": weight, "border_frames": border, "seconds": seconds,
        "border_warping_error": float(np.mean([warps[t - 1] for t in border])) if border else None,
        "interior_warping_error": float(np.mean([warps[t - 1] for t in inner])) if inner else None,
        "sequential_border_warping_error": float(np.mean([sequential[t - 1] for t in border])) if border else None,
        "warping_error_per_pair": warps,
    }


def strip(
    path: Path, clip: list[np.ndarray], variants: dict[str, Variant], motions: list[tuple[np.ndarray, np.ndarray]], columns: int
) -> None:
    """Frames 1…columns: the input, each variant, and each variant's disagreement with its
    previous frame moved by the flow (|O_t − warp(O_t-1)|, ×4, black where unreliable)."""
    from onnxstyle.commands.sheet import contact_sheet, enlarge_for_labels

    ts = list(range(1, min(columns, len(clip) - 1) + 1))
    rows: list[tuple[str, list[np.ndarray]]] = [("input", [clip[t] for t in ts])]
    for name, v in variants.items():
        rows.append((name, [v.outputs[t] for t in ts]))
    for name, v in variants.items():
        maps = []
        for t in ts:
            flow, mask = motions[t - 1]
            diff = np.abs(v.outputs[t] - warp(v.outputs[t - 1], flow)).mean(axis=-1) * mask
            maps.append(np.repeat(np.clip(diff * 4, 0, 1)[..., None], 3, axis=-1))
        rows.append((f"{name}: change", maps))
    panels = enlarge_for_labels([p for _, ps in rows for p in ps], 160)
    labels = [f"frame {t}" for _ in rows for t in ts]
    sheet = contact_sheet(panels, labels, len(ts), row_labels=[r for r, _ in rows])
    bgr = np.round(sheet[:, :, ::-1] * 255).astype(np.uint8)
    write_atomic(path, cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes())  # a docs image: kept small


def run_clip(st: Stylizer, name: str, args: argparse.Namespace, style: np.ndarray, run: RunSettings, log: Any) -> dict[str, Any]:
    if name == "pan":
        clip, motions = pan_clip(args.frames, args.size)
        motion_kind = f"exact: a pan of {PAN_STEP} px per frame"
    else:
        clip = real_clip(CLIPS[name], args.frames, args.size)
        motions = [metric_motion(clip[t - 1], clip[t]) for t in range(1, len(clip))]
        motion_kind = "Farnebäck flow of the input frames, Ruder's consistency check"
    h, w = clip[0].shape[:2]
    run = run.replace(size=max(h, w))
    log(f"{name}: {len(clip)} frames at {w}x{h}")
    t0 = time.perf_counter()
    first = st.run(clip[0], [style], run)
    shared = (from_nchw(first.image), time.perf_counter() - t0, first.evaluations)
    variants = {"independent": Variant("independent", None)}
    variants.update({f"temporal {w_:g}": Variant(f"temporal {w_:g}", w_) for w_ in args.weights})
    results: dict[str, Any] = {}
    for key, v in variants.items():
        run_variant(st, clip, style, run, args.later_iterations, shared, v)
        results[key] = measure(st, clip, style, run, v, motions)
        log(f"  {key}: warping error {results[key]['warping_error']:.3g}, Gram {results[key]['gram_distance']:.3g}, "
            f"{results[key]['frames_per_minute']:.2f} frames/min")
    base = results["independent"]
    for r in results.values():
        r["warp_ratio"] = r["warping_error"] / max(base["warping_error"], 1e-12)
        r["gram_ratio"] = r["gram_distance"] / max(base["gram_distance"], 1e-12)
    out = {"frames": len(clip), "width": w, "height": h, "motion": motion_kind, "variants": results}
    out["_clip"], out["_motions"], out["_variants"] = clip, motions, variants  # for strips and chunks, not saved
    return out


def markdown(report: dict[str, Any]) -> str:
    a = report["settings"]
    lines = [
        "# Video: temporal consistency",
        "",
        f"Machine: {report['machine']}; backend {report['provider']}, {report['threads']} threads; {report['date']}.",
        f"Style {a['style']}; first frame {a['iterations']} evaluations, later frames {a['later_iterations'] or 'half'}; "
        f"longest side {a['size']} px, {a['frames']} frames per clip. Command: `{report['command']}`",
        "",
        "Warping error (Lai et al. 2018): mean over reliable pixels of ‖O_t − warp(O_t-1)‖² (RGB in [0,1]), averaged over "
        "frame pairs; lower is steadier. Gram distance: ‖G(out) − G(style)‖²/‖G(style)‖² averaged over the style layers; "
        "content distance likewise at the content layer (both over the frames after the shared first frame). "
        "Ratios are against independent frames.",
        "",
        "| clip | variant | warping error | × indep. | Gram distance | × indep. | content distance | frames/min |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, c in report["clips"].items():
        for key, r in c["variants"].items():
            lines.append(
                f"| {name} | {key} | {r['warping_error']:.4g} | {r['warp_ratio']:.2f} | {r['gram_distance']:.4g} | "
                f"{r['gram_ratio']:.2f} | {r['content_distance']:.4g} | {r['frames_per_minute']:.2f} |"
            )
    lines += ["", "Motion for the metric: " + "; ".join(f"{n}: {c['motion']}" for n, c in report["clips"].items()) + "."]
    w = report["chosen_weight"]
    lines += ["", f"**Chosen temporal weight: {w:g}**" if w is not None else "**No weight kept the Gram distance within target.**",
              f"(the lowest mean warping ratio among the weights whose Gram distance stays within {TARGETS['gram_ratio']:.2f}× "
              "that of independent frames on every clip)."]
    pan = report["clips"].get("pan")
    if pan and w is not None:
        r = pan["variants"][f"temporal {w:g}"]
        ok = r["warp_ratio"] <= TARGETS["warp_ratio"] and r["gram_ratio"] <= TARGETS["gram_ratio"]
        lines += ["", f"Target on the pan: warping error ≤ {TARGETS['warp_ratio']}× independent with the Gram distance within "
                  f"{TARGETS['gram_ratio'] - 1:.0%}: {r['warp_ratio']:.2f}× and {r['gram_ratio']:.2f}× — **{'met' if ok else 'missed'}**."]
    for name, c in report["clips"].items():
        ch = c.get("chunks")
        if ch and ch["border_warping_error"] is not None:
            inner = ch["interior_warping_error"]
            lines += ["", f"Chunks ({name}, `video --ray` as run in one process: {ch['length']} frames, overlap {ch['overlap']}, "
                      f"weight {ch['weight']:g}): warping error at the pairs touching a border (frames {ch['border_frames']}) "
                      f"{ch['border_warping_error']:.4g}, elsewhere {inner if inner is not None else float('nan'):.4g}; "
                      f"the same pairs in one sequential run {ch['sequential_border_warping_error']:.4g}."]
    if report.get("quick"):
        lines += ["", "**Smoke run (--quick): these figures mean nothing.**"]
    if report["load_average"] > os.cpu_count() / 2:  # type: ignore[operator]
        lines += ["", f"**The load average was {report['load_average']:.1f} during the run: other work shared the cores.**"]
    return "\n".join(lines) + "\n"


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", default="pan,carphone,bigbuckbunny")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--frames", type=int, default=12)
    p.add_argument("--iterations", type=int, default=150, help="evaluations of the first frame (and of every independent frame)")
    p.add_argument("--later-iterations", type=int, default=None, help="evaluations of later frames (default: half)")
    p.add_argument("--weights", default="0,30,100,300,1000", help="temporal weights to compare")
    p.add_argument("--style", type=Path, default=ROOT / "onnxstyle" / "data" / "starry_night.jpg")
    p.add_argument("--chunks", default="8,2", help="L,O: also run in chunks of L frames overlapping by O (0: skip)")
    p.add_argument("--chunk-clips", default="pan,carphone")
    p.add_argument("--models", type=Path, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--strip", type=Path, default=None, help="write a strip of frames per clip into this folder (docs/video)")
    p.add_argument("--quick", action="store_true", help="smoke run: 64 px, 3 frames, 6 evaluations, pan and carphone")
    a = p.parse_args()
    if a.quick:
        a.size, a.frames, a.iterations, a.weights, a.chunks = 64, 4, 6, "0,100", "3,1"
        a.clips = "pan,carphone"
    a.weights = [float(x) for x in a.weights.split(",") if x]
    return a


def main() -> None:
    args = parse()
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    ref = resolve_models(export_settings_for("gatys"), args.models, log=log)
    st = Stylizer(ref.folder, EngineConfig(device=args.device, threads=args.threads), ref.fix)
    style = load_image(args.style, 2 * args.size)[0]
    run = RunSettings(size=args.size, iterations=args.iterations)
    clips = {name: run_clip(st, name, args, style, run.replace(size=args.size), log) for name in args.clips.split(",")}
    weight = choose_weight(clips, TARGETS["gram_ratio"])
    length, overlap = (int(x) for x in args.chunks.split(",")) if args.chunks != "0" else (0, 0)
    for name, c in clips.items():
        if length and weight is not None and name in args.chunk_clips.split(",") and c["frames"] > length:
            seq = c["variants"][f"temporal {weight:g}"]["warping_error_per_pair"]
            c["chunks"] = chunk_borders(st, c["_clip"], style, run.replace(size=max(c["width"], c["height"])), args.later_iterations,
                                        weight, ChunkPlan(length, overlap), c["_motions"], seq)
        if args.strip and weight is not None:
            args.strip.mkdir(parents=True, exist_ok=True)
            shown = {"independent": c["_variants"]["independent"], f"temporal {weight:g}": c["_variants"][f"temporal {weight:g}"]}
            strip(args.strip / f"{name}.jpg", c["_clip"], shown, c["_motions"], 4)
    report = {
        "machine": cpu_model(), "provider": st.engine.provider, "threads": st.engine.threads,
        "date": _dt.datetime.now().isoformat(timespec="seconds"), "load_average": os.getloadavg()[0],
        "command": "python benchmarks/video.py " + " ".join(sys.argv[1:]), "quick": args.quick,
        "settings": {"size": args.size, "frames": args.frames, "iterations": args.iterations, "later_iterations": args.later_iterations,
                     "weights": args.weights, "style": args.style.name},
        "targets": TARGETS, "chosen_weight": weight,
        "clips": {n: {k: v for k, v in c.items() if not k.startswith("_")} for n, c in clips.items()},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "video.json").write_text(json.dumps(report, indent=1))
    md = markdown(report)
    (args.out / "video.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
