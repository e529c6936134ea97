"""Schedules and step rules in one process: the loss each reaches against seconds (issue 22).

Each variant is a set of RunSettings overrides (the pyramid's caps, its start, the stop rule,
the L-BFGS step rule, a fixed --iterations …); all run one after the other on one warm
Stylizer (the default engine: OpenVINO bf16 where native), on one content/style pair, and
each finished image is judged by judge.py (fp32 loss on onnxruntime, sliced-Wasserstein
distance). The trace (seconds, stage, loss) of every evaluation is kept, so "the loss at
T seconds" and "the seconds to reach loss L" can be read for any cap shorter than the one run.

    python benchmarks/schedule.py --pair tubingen:starry_night --size 512 \\
        --variant 'c20={"pyramid_coarse_iterations": 20, "pyramid_final_iterations": 300, "stop_tol": 0}' \\
        --variant 'c80={"pyramid_coarse_iterations": 80, "pyramid_final_iterations": 300, "stop_tol": 0}'
    python benchmarks/schedule.py --pair tubingen:the_scream --size 256 \\
        --variant 'unit={"iterations": 300}' --variant 'armijo={"iterations": 300, "lbfgs_step": "armijo"}'

Writes (and adds to) <out>/schedule-<content>-<style>-<size>.json and .md. The first variant
run in a fresh cache also pays the compiles of its shapes: read the times of a second run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

MARKS_S = (60, 100, 130, 160, 190, 220, 250, 300)  # seconds at which the md reads each curve
MARKS_K = (1, 10, 30, 60, 100, 150, 200, 250, 300)  # output-size evaluations, likewise


def run_variants(pair: tuple[str, str], size: int, variants: dict[str, dict[str, Any]], models: Path, threads: int,
                 precision: str, out: Path) -> dict[str, Any]:
    from judge import judge
    from time_to_quality import find_image

    from onnxstyle.runtime.image_io import from_nchw, load_image, resize_longest
    from onnxstyle.runtime.settings import EngineConfig, RunSettings
    from onnxstyle.runtime.stylizer import Stylizer

    paths = [find_image(stem) for stem in pair]
    if None in paths:
        raise SystemExit(f"images not found: {pair}")
    content, style = (resize_longest(load_image(p)[0], size) for p in paths)  # type: ignore[arg-type]
    st = Stylizer(models, EngineConfig(threads=threads, precision=precision))
    res = json.loads(out.read_text()) if out.is_file() else {"pair": list(pair), "size": size, "variants": {}}
    for name, over in variants.items():
        s = RunSettings(size=size, **{k: tuple(v) if isinstance(v, list) else v for k, v in over.items()})
        trace: list[tuple[float, int, float]] = []
        t0 = time.perf_counter()
        r = st.run(content, [style], s, callback=lambda it: trace.append((time.perf_counter() - t0, it.stage, it.loss)))
        wall = time.perf_counter() - t0
        j = judge(from_nchw(r.image), content, style, models, threads)
        res["variants"][name] = {"settings": over, "wall_s": wall, "evaluations": r.evaluations, "trace": trace,
                                 "fp32_loss": j["fp32_loss"], "swd_mean": j["swd_mean"], "precision_switch": r.precision_switch,
                                 "engine": st.engine.provider, "loadavg": os.getloadavg()}
        print(f"{name}: {wall:.1f} s, {r.evaluations} evaluations, fp32 loss {j['fp32_loss']:.5f}, SWD {j['swd_mean']:.4f}",
              file=sys.stderr, flush=True)
        out.write_text(json.dumps(res) + "\n")
    return res


def curve(trace: list[list[float]]) -> list[tuple[float, float, int]]:
    """(seconds, best loss so far, evaluations) over the output-size stage."""
    last = max(int(s) for _, s, _ in trace)
    best, k, pts = float("inf"), 0, []
    for t, s, loss in trace:
        if int(s) == last:
            best, k = min(best, loss), k + 1
            pts.append((t, best, k))
    return pts


def markdown(res: dict[str, Any]) -> str:
    lines = [f"# Schedules at {res['size']} px: {' × '.join(res['pair'])} (one process)", "",
             "Best own loss (the run's precision) at the output-size stage, read at each time since the run began, "
             "and after each number of output-size evaluations; then the judge's fp32 loss and SWD of the finished "
             "image. Lower is better.", "",
             "| variant | settings | wall | " + " | ".join(f"{m} s" for m in MARKS_S) + " | fp32 loss | SWD |",
             "| --- | --- | --- | " + " | ".join("---" for _ in MARKS_S) + " | --- | --- |"]
    for name, v in res["variants"].items():
        pts = curve(v["trace"])
        cells = []
        for m in MARKS_S:
            seen = [p for p in pts if p[0] <= m]
            cells.append(f"{seen[-1][1]:.4f}" if seen else "—")
        lines.append(f"| {name} | `{json.dumps(v['settings'])}` | {v['wall_s']:.0f} s | " + " | ".join(cells)
                     + f" | {v['fp32_loss']:.5f} | {v['swd_mean']:.4f} |")
    lines += ["", "| variant | output-size stage from | " + " | ".join(f"k={k}" for k in MARKS_K) + " |",
              "| --- | --- | " + " | ".join("---" for _ in MARKS_K) + " |"]
    for name, v in res["variants"].items():
        pts = curve(v["trace"])
        lines.append(f"| {name} | {pts[0][0]:.1f} s | " + " | ".join(f"{pts[k - 1][1]:.4f}" if k <= len(pts) else "—" for k in MARKS_K) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pair", default="tubingen:starry_night", help="content:style, by file stem")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--variant", action="append", default=[], help="NAME=JSON of RunSettings overrides; repeatable")
    ap.add_argument("--models", type=Path, default=None, help="default: the gatys export (made if missing)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    from judge import default_models

    from onnxstyle.runtime.providers import physical_cores

    variants = {}
    for v in args.variant or ['default={}']:
        name, _, js = v.partition("=")
        variants[name] = json.loads(js or "{}")
    pair = tuple(args.pair.split(":"))
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"schedule-{pair[0]}-{pair[1]}-{args.size}.json"
    res = run_variants(pair, args.size, variants, args.models or default_models(), args.threads or physical_cores(),  # type: ignore[arg-type]
                       args.precision, out)
    out.with_suffix(".md").write_text(markdown(res))
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
