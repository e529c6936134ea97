"""bf16 against fp32: does OpenVINO's bf16 give the same images as fp32, for how much less time?

On the three gallery pairs (Tübingen × The Starry Night, The Scream, The Shipwreck), each
side stylizes with the default settings (one 512 px stage, 300 evaluations, float32
projected L-BFGS; a bf16 run whose line search stalls goes on in fp32, and when it did is
recorded). Every result is then judged by one fp32 engine (onnxruntime CPU) on the same
inputs:

* loss: the final image's loss, re-evaluated in fp32 on the run's targets;
* Gram distance: mean over the style layers of ‖G(out) − G(style)‖² / ‖G(style)‖²;
* content distance: ‖F(out) − F(content)‖² / ‖F(content)‖² at relu4_2

(as tests/test_stylize.py defines them, computed with the fp32 features graph; the style
resized as Stylizer resizes it, the content to the output's size). Target: bf16 within 2%
of fp32 on each (loss and Gram distance: not more than 2% higher; content distance: within
±2%, as it is a balance, not a goal).

    python benchmarks/precision.py                   # ~30 min on 2 cores
    python benchmarks/precision.py --with-ort        # + onnxruntime fp32 as a second fp32 (~1 h)
    python benchmarks/precision.py --quick           # smoke run, a minute or two

Writes <out>/precision.{json,md} and docs/gallery/precision_<style>.jpg (bf16 | fp32).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

# (key for file names, image stem): the gallery's pairs, all with Tübingen as the content.
PAIRS = (("starry", "starry_night"), ("scream", "the_scream"), ("shipwreck", "shipwreck"))
TITLES = {"starry_night": "The Starry Night", "the_scream": "The Scream", "shipwreck": "The Shipwreck"}
TOLERANCE = 0.02  # bf16 within 2% of fp32
GALLERY_SIDE = 384  # px, longest side of each panel in the gallery rows: modest files


def judge(checker: Any, content: np.ndarray, style: np.ndarray, out: np.ndarray, size: int) -> dict[str, Any]:
    """Loss, Gram distance and content distance of ``out`` ([1,3,H,W]) by the fp32 engine."""
    from onnxstyle.runtime.image_io import resize_longest, resize_to, to_nchw
    from time_to_quality import exact_targets

    eng = checker.engine
    spec = eng.manifest.spec
    h, w = out.shape[2:]
    c = resize_to(content, h, w)
    targets = exact_targets(checker, c, style, size)
    r = eng.loss_grad(out, targets)
    fo = eng.features(out)
    fs = eng.features(to_nchw(resize_longest(style, size)))
    fc = eng.features(to_nchw(c))

    def rel(a: np.ndarray, b: np.ndarray) -> float:
        a, b = a.astype(np.float64), b.astype(np.float64)
        return float(((a - b) ** 2).sum() / (b**2).sum())

    grams = {n: rel(fo[f"gram_{n}"], fs[f"gram_{n}"]) for n in spec.style_layers}
    return {
        "loss": r.loss,
        "terms": r.terms,
        "gram_distance": float(np.mean(list(grams.values()))),
        "gram_distance_by_layer": grams,
        "content_distance": rel(fo["content_relu4_2"], fc["content_relu4_2"]),
    }


def compare(bf16: dict[str, Any], fp32: dict[str, Any]) -> dict[str, Any]:
    """bf16's relative difference from fp32 on each figure, and whether it is within the tolerance."""
    out: dict[str, Any] = {}
    for k, two_sided in (("loss", False), ("gram_distance", False), ("content_distance", True)):
        d = (bf16[k] - fp32[k]) / fp32[k]
        out[k] = {"rel_diff": d, "met": abs(d) <= TOLERANCE if two_sided else d <= TOLERANCE}
    return out


def gallery_row(results: dict[str, dict[str, Any]], sides: list[str], title: str, path: Path) -> None:
    """bf16 | fp32 side by side, labelled with each one's fp32 loss and wall time; JPEG."""
    import cv2

    from onnxstyle.runtime.image_io import from_nchw, resize_longest, write_atomic
    from onnxstyle.commands.sheet import contact_sheet
    from speed import SIDE

    panels = [resize_longest(from_nchw(results[s]["image"]), GALLERY_SIDE) for s in sides]
    labels = [f"{SIDE[s].label}: loss {results[s]['judged']['loss']:.4g}, {results[s]['wall_s']:.0f} s" for s in sides]
    sheet = contact_sheet(panels, labels, columns=len(panels), title=title)
    bgr = np.round(np.clip(sheet[:, :, ::-1], 0, 1) * 255).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 85])
    if not ok:
        raise RuntimeError(f"could not encode {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, buf.tobytes())


def run_pair(stylizers: dict[str, Any], order: list[str], content: np.ndarray, style: np.ndarray, settings: Any) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name in order:
        t0 = time.perf_counter()
        r = stylizers[name].run(content, [style], settings)
        wall = time.perf_counter() - t0
        out[name] = {"image": r.image, "wall_s": wall, "optimizer_s": r.elapsed, "evaluations": r.evaluations,
                     "own_loss": r.loss, "precision_switch": r.precision_switch, "error": r.error,
                     "provider": stylizers[name].engine.provider}
        sw = f", fp32 from evaluation {r.precision_switch}" if r.precision_switch else ""
        print(f"  {name:8s} {wall:6.1f} s, own loss {r.loss:.5g}{sw}", file=sys.stderr, flush=True)
    return out


def main() -> None:
    from speed import SIDE, available_sides

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=None, help="longest side (default 512)")
    ap.add_argument("--evals", type=int, default=None, help="evaluations (default 300)")
    ap.add_argument("--pairs", default=",".join(k for k, _ in PAIRS), help="styles, of " + ", ".join(k for k, _ in PAIRS))
    ap.add_argument("--with-ort", action="store_true", help="also onnxruntime fp32: a second fp32, to show fp32's own spread")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--models", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=None, help="default benchmarks/results (--quick: a temporary folder)")
    ap.add_argument("--gallery", type=Path, default=None, help="default docs/gallery (--quick: <out>/gallery)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 64 px, 20 evaluations, one pair")
    args = ap.parse_args()

    from onnxstyle.runtime.stylizer import Stylizer
    from onnxstyle.runtime.image_io import load_image, resize_longest
    from onnxstyle.runtime.providers import cpu_model, physical_cores
    from onnxstyle.runtime.settings import EngineConfig, RunSettings
    from time_to_quality import SEARCH, exact_stylizer, find_image

    size = args.size or (64 if args.quick else 512)
    evals = args.evals or (20 if args.quick else 300)
    out_dir = args.out or (Path(tempfile.gettempdir()) / "onnxstyle-quick" if args.quick else ROOT / "benchmarks" / "results")
    gallery = args.gallery or (out_dir / "gallery" if args.quick else ROOT / "docs" / "gallery")
    keys = [k.strip() for k in args.pairs.split(",") if k.strip()]
    if args.quick and args.pairs == ap.get_default("pairs"):
        keys = keys[:1]
    stems = dict(PAIRS)
    if any(k not in stems for k in keys):
        ap.error(f"--pairs: choose from {', '.join(stems)}")
    have = {s.name for s in available_sides()}
    if "ov-bf16" not in have:
        raise SystemExit("this machine has no OpenVINO bf16 (OpenVINO with native AVX512_BF16/AMX): nothing to compare")
    sides = ["ov-bf16", "ov-fp32"] + (["ort-fp32"] if args.with_ort else [])
    threads = args.threads or physical_cores()
    if args.models is not None:
        models = args.models
    else:
        from onnxstyle.autoexport import resolve_models
        from onnxstyle.exportdir import export_settings_for

        models = resolve_models(export_settings_for("gatys")).folder
    settings = RunSettings(size=size, iterations=evals)
    content_path = find_image("tubingen")
    if content_path is None:
        raise SystemExit("tubingen image not found in " + ", ".join(map(str, SEARCH)))
    content = load_image(content_path)[0]
    checker = exact_stylizer(models, threads)
    stylizers = {s: Stylizer(models, EngineConfig(device=SIDE[s].device, precision=SIDE[s].precision, threads=threads)) for s in sides}
    for st in stylizers.values():  # warm: sessions built or loaded from the caches before timing
        st.run(resize_longest(content, 64), [resize_longest(content, 64)], RunSettings(size=64, iterations=3))

    res: dict[str, Any] = {
        "command": " ".join(["python benchmarks/precision.py", *sys.argv[1:]]), "quick": args.quick,
        "machine": {"cpu": cpu_model(), "threads": threads, "loadavg_start": os.getloadavg(),
                    "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")},
        "size": size, "evaluations": evals, "sides": sides, "content": str(content_path), "tolerance": TOLERANCE, "pairs": {},
    }
    t_all = time.perf_counter()
    for i, key in enumerate(keys):
        path = find_image(stems[key])
        if path is None:
            print(f"{key}: {stems[key]} not found in {', '.join(map(str, SEARCH))}; skipped", file=sys.stderr)
            continue
        style = load_image(path)[0]
        print(f"{key} ({path}):", file=sys.stderr, flush=True)
        order = sides[i % len(sides):] + sides[: i % len(sides)]  # each side goes first in turn
        runs = run_pair(stylizers, order, content, style, settings)
        for name, r in runs.items():
            r["judged"] = judge(checker, content, style, r["image"], size)
        title = f"Tübingen × {TITLES[stems[key]]}, {size} px, {evals} evaluations: bf16 | fp32"
        row = gallery / f"precision_{key}.jpg"
        gallery_row(runs, ["ov-bf16", "ov-fp32"], title, row)
        entry = {"style": str(path), "gallery": str(row), "order": order,
                 "runs": {n: {k: v for k, v in r.items() if k != "image"} for n, r in runs.items()},
                 "bf16_vs_fp32": compare(runs["ov-bf16"]["judged"], runs["ov-fp32"]["judged"])}
        if "ort-fp32" in runs:
            entry["ort_vs_ov_fp32"] = compare(runs["ort-fp32"]["judged"], runs["ov-fp32"]["judged"])
        res["pairs"][key] = entry
        write(res, out_dir, time.perf_counter() - t_all)
    write(res, out_dir, time.perf_counter() - t_all)
    print((out_dir / "precision.md").read_text())
    print(f"wrote {out_dir / 'precision.json'}, .md and {gallery}/precision_*.jpg ({time.perf_counter() - t_all:.0f} s)",
          file=sys.stderr)


def write(res: dict[str, Any], out: Path, wall: float) -> None:
    res["wall_s"] = wall
    res["loadavg_end"] = os.getloadavg()
    out.mkdir(parents=True, exist_ok=True)
    (out / "precision.json").write_text(json.dumps(res, indent=1) + "\n")
    (out / "precision.md").write_text(markdown(res))


def _pct(d: float) -> str:
    return f"{100 * d:+.2f}%"


def markdown(res: dict[str, Any]) -> str:
    from speed import SIDE

    m = res["machine"]
    lines = [f"# bf16 vs fp32 (OpenVINO): quality and time, {res['size']} px, {res['evaluations']} evaluations", ""]
    if res["quick"]:
        lines += ["**Quick smoke run (`--quick`): tiny size and too few evaluations to mean anything.**", ""]
    load = max(m["loadavg_start"][0], res["loadavg_end"][0])
    if load > 0.5 * m["threads"]:
        lines += [f"**The machine was busy (load average up to {load:.1f}, this run included): times are unreliable.**", ""]
    lines += [
        f"{m['cpu']}, {m['threads']} threads; {m['date']}. Default settings (`RunSettings(size={res['size']}, "
        f"iterations={res['evaluations']})`: one stage, float32 projected L-BFGS). Every result judged by one fp32 "
        "engine (onnxruntime CPU): loss re-evaluated on the run's targets; Gram distance = mean over style layers of "
        "‖G(out)−G(style)‖²/‖G(style)‖²; content distance = ‖F(out)−F(content)‖²/‖F(content)‖² at relu4_2. "
        f"Target: bf16 within {100 * res['tolerance']:.0f}% of fp32 (loss, Gram distance: at most that much higher; "
        "content distance: within ± that). Wall time: `Stylizer.run` on warm sessions.",
        "",
        "| pair | side | fp32 loss | Gram distance | content distance | wall time | fp32 fallback at |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    verdicts = []
    for key, e in res["pairs"].items():
        for name, r in e["runs"].items():
            j = r["judged"]
            fb = str(r["precision_switch"]) if r["precision_switch"] else ("—" if name == "ov-bf16" else "n/a")
            wall = f"{r['wall_s']:.0f} s" if r["wall_s"] >= 10 else f"{r['wall_s']:.1f} s"
            lines.append(f"| {key} | {SIDE[name].label} | {j['loss']:.5g} | {j['gram_distance']:.4g} | {j['content_distance']:.4g} "
                         f"| {wall} | {fb} |")
        c = e["bf16_vs_fp32"]
        t = e["runs"]["ov-fp32"]["wall_s"] / e["runs"]["ov-bf16"]["wall_s"]
        cells = [f"{_pct(c[k]['rel_diff'])} {'met' if c[k]['met'] else '**not met**'}" for k in ("loss", "gram_distance", "content_distance")]
        lines.append(f"| {key} | **bf16 vs fp32** | {cells[0]} | {cells[1]} | {cells[2]} | {t:.2f}× faster | |")
        if "ort_vs_ov_fp32" in e:
            o = e["ort_vs_ov_fp32"]
            lines.append(f"| {key} | onnxruntime vs OpenVINO fp32 (fp32's own spread) | " + " | ".join(
                _pct(o[k]["rel_diff"]) for k in ("loss", "gram_distance", "content_distance")) + " | | |")
        verdicts.append(all(v["met"] for v in c.values()))
    lines += [
        "",
        f"bf16 within {100 * res['tolerance']:.0f}% of fp32 on every figure of every pair: "
        + ("met" if verdicts and all(verdicts) else "**not met**") + ".",
        "",
        "Rows of images (bf16 | fp32): " + ", ".join(f"`{Path(e['gallery']).name}`" for e in res["pairs"].values()) + ".",
        "",
        f"Reproduce: `{res['command']}`",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
