"""Exact tiling, measured: does a tiled run match the untiled one, what does the halo cost,
and does a budget hold?

    python benchmarks/tiling.py                 # the three targets (about 25 minutes on 2 cores)
    python benchmarks/tiling.py --quick --out /tmp/t   # a smoke run at small sizes

1. **Same result.** At 1024 px, 8 evaluations untiled and with ``--tile 256`` from the same
   start: the final loss (re-evaluated untiled, fp32) within 0.5%, the mean absolute pixel
   difference at most 2/255.
2. **The budget holds.** The whole-process peak (VmHWM) of ``onnxstyle stylize --size 2048
   --max-memory 3G`` (single scale, a few evaluations): at most 3 GiB.
3. **What the halo costs.** Time per evaluation at 2048 px untiled and in tiles of 1024, 512
   and 256 px (target: 1024 px tiles within 2.5× untiled), with the pixels each pass evaluates.

Writes <out>/tiling.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from memory import CLI, MARK  # noqa: E402  (the VmHWM wrapper of the real command)


def images() -> tuple[Path, Path]:
    shared = ROOT.parent / "shared" / "images"
    content = shared / "tubingen.jpg" if (shared / "tubingen.jpg").is_file() else ROOT / "onnxstyle" / "data" / "tubingen.jpg"
    return content, ROOT / "onnxstyle" / "data" / "starry_night.jpg"


def same_result(models: Path, size: int, tile: int, evals: int, precision: str) -> dict[str, Any]:
    """In fp32 the two runs do the same arithmetic up to summation order, so they should follow
    one trajectory; in bf16 the tiles' dynamic-shape kernels round differently from the whole
    image's static ones, and L-BFGS amplifies that from the first step."""
    from onnxstyle.runtime.stylizer import Stylizer
    from onnxstyle.runtime.image_io import load_image
    from onnxstyle.runtime.settings import EngineConfig, RunSettings

    content, style = images()
    c, s = load_image(content, size)[0], load_image(style, size)[0]
    st = Stylizer(models, EngineConfig(precision=precision))
    base = RunSettings(size=size, scales=(size,), iterations=evals)
    out: dict[str, Any] = {"size": size, "tile": tile, "evaluations": evals, "provider": st.engine.provider}
    results = {}
    for name, settings in (("untiled", base.replace(tile="off")), ("tiled", base.replace(tile=tile))):
        t0 = time.perf_counter()
        results[name] = st.run(c, [s], settings)
        out[f"{name}_s"] = time.perf_counter() - t0
    # One judge for both: the untiled loss in fp32 (onnxruntime), same targets.
    judge = Stylizer(models, EngineConfig(device="cpu"))
    targets = judge.targets(c, [s], base, regions=1)
    targets["guide"] = np.ones((1, 1, *c.shape[:2]), np.float32)
    losses = {k: judge.engine.loss_grad(r.image, targets).loss for k, r in results.items()}
    out["loss_fp32"] = losses
    out["loss_rel_diff"] = abs(losses["tiled"] - losses["untiled"]) / losses["untiled"]
    out["mean_abs_pixel_diff_255"] = float(np.abs(results["tiled"].image - results["untiled"].image).mean() * 255)
    out["tiles"] = len(st.plan(c.shape[:2], base.replace(tile=tile)).stages[0].tiles.tiles)
    return out


def budget_holds(models: Path, size: int, budget: str, evals: int) -> dict[str, Any]:
    content, style = images()
    with tempfile.TemporaryDirectory() as tmp:
        args = ["stylize", str(content), str(style), "-o", f"{tmp}/o.png", "--models", str(models), "--size", str(size),
                "--scales", str(size), "--iterations", str(evals), "--max-memory", budget, "-q"]
        dry = subprocess.run([sys.executable, "-m", "onnxstyle.cli", *args, "--dry-run"], capture_output=True, text=True, cwd=ROOT)
        t0 = time.monotonic()
        r = subprocess.run([sys.executable, "-c", CLI, json.dumps(args)], capture_output=True, text=True, cwd=ROOT)
        wall = time.monotonic() - t0
    line = [ln for ln in r.stdout.splitlines() if ln.startswith(MARK)][-1]
    res = json.loads(line[len(MARK):])
    from onnxstyle.runtime.settings import parse_size

    return {"size": size, "budget": budget, "budget_bytes": parse_size(budget), "peak": res["peak"], "exit": res["code"],
            "evaluations": evals, "wall_s": wall, "plan": dry.stdout.strip().splitlines()}


def halo_cost(models: Path, size: int, tiles: list[int | str], evals: int) -> list[dict[str, Any]]:
    from onnxstyle.runtime.stylizer import Stylizer
    from onnxstyle.runtime.image_io import load_image
    from onnxstyle.runtime.settings import RunSettings

    content, style = images()
    c, s = load_image(content, size)[0], load_image(style, size)[0]
    st = Stylizer(models)
    rows = []
    for tile in tiles:
        settings = RunSettings(size=size, scales=(size,), iterations=evals, tile=tile, max_memory=2**50)
        plan = st.plan(c.shape[:2], settings).stages[0]
        stamps: list[float] = []
        st.run(c, [s], settings, callback=lambda it: stamps.append(time.perf_counter()))
        per_eval = statistics.median(np.diff(stamps)) if len(stamps) > 2 else float("nan")
        rows.append({"tile": tile, "tiles": len(plan.tiles.tiles) if plan.tiles else 1,
                     "pixels_per_pass": plan.tiles.overhead if plan.tiles else 1.0, "s_per_eval": per_eval})
        print(f"  {size} px tile {tile}: {per_eval:.2f} s per evaluation", flush=True)
    return rows


def markdown(res: dict[str, Any]) -> str:
    s, b, h = res["same"], res["budget"], res["halo"]
    untiled = next(r for r in h if r["tile"] == "off")
    lines = [
        "# Exact tiling: same result, bounded memory, the halo's cost", "",
        f"{res['machine']}; {s['provider']}; load average at start {res['load'][0]:.2f}.", "",
        f"**Same result** ({s['size']} px, {s['evaluations']} evaluations from the same start, {s['tiles']} tiles of {s['tile']} px):"
        f" final loss (fp32, untiled) {s['loss_fp32']['untiled']:.5g} untiled, {s['loss_fp32']['tiled']:.5g} tiled,"
        f" {100 * s['loss_rel_diff']:.3f}% apart (target ≤ 0.5%); mean |pixel difference| {s['mean_abs_pixel_diff_255']:.2f}/255 (target ≤ 2/255).",
        "",
        f"The same on {res['same_bf16']['provider']}: {100 * res['same_bf16']['loss_rel_diff']:.3f}% apart,"
        f" {res['same_bf16']['mean_abs_pixel_diff_255']:.2f}/255 (bf16 rounds tiles and the whole image differently).",
        "",
        f"**Budget** (`--size {b['size']} --max-memory {b['budget']}`, {b['evaluations']} evaluations): peak RSS"
        f" {b['peak'] / 2**20:.0f} MiB against {b['budget_bytes'] / 2**20:.0f} MiB (target ≤ 3 GiB); exit {b['exit']}.",
        "", "Its plan (`--dry-run`):", "", "```", *b["plan"], "```", "",
        f"**The halo's cost** at {res['halo_size']} px (time per evaluation; each tile is evaluated twice, statistics then gradient):", "",
        "| tiles | count | pixels per pass | s per evaluation | × untiled |", "| --- | --- | --- | --- | --- |",
    ]
    for r in h:
        lines.append(f"| {r['tile']} | {r['tiles']} | {r['pixels_per_pass']:.2f} | {r['s_per_eval']:.2f} | {r['s_per_eval'] / untiled['s_per_eval']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, to check the script")
    ap.add_argument("--models", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    import os

    from speed import machine  # noqa: E402

    from onnxstyle.autoexport import resolve_models
    from onnxstyle.runtime.providers import physical_cores
    from onnxstyle.exportdir import export_settings_for

    models = args.models or resolve_models(export_settings_for("gatys"), log=print).folder
    q = args.quick
    res: dict[str, Any] = {"machine": machine(physical_cores())["cpu"], "load": os.getloadavg()}
    res["same"] = same_result(models, 256 if q else 1024, 64 if q else 256, 3 if q else 8, "fp32")
    print("same result:", res["same"], flush=True)
    res["same_bf16"] = same_result(models, 256 if q else 1024, 64 if q else 256, 3 if q else 8, "auto")
    print("same result (engine default precision):", res["same_bf16"], flush=True)
    res["budget"] = budget_holds(models, 512 if q else 2048, "1G" if q else "3G", 2 if q else 4)
    print("budget:", {k: v for k, v in res["budget"].items() if k != "plan"}, flush=True)
    res["halo_size"] = 512 if q else 2048
    res["halo"] = halo_cost(models, res["halo_size"], ["off", 256] if q else ["off", 1024, 512, 256], 3 if q else 4)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tiling.json").write_text(json.dumps(res, indent=1) + "\n")
    md = markdown(res)
    (args.out / "tiling.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
