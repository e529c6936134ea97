"""Batch throughput: images per minute on local worker processes and on a local Ray.

Configurations (``--configs``, each ``kind:workers×threads``): Ray with 1 actor × 1 thread and
2 actors × 1 thread (the scaling target: ≥ 1.7×), and the local process pool, which Ray
should not fall behind. Every configuration runs the same items through the same worker
code (onnxstyle.workers.pools) on a fresh pool.

Throughput is measured in the steady state: from the moment the first round of items (one per
worker: start-up, session compilation) has finished to the last item, so start-up costs are
reported apart and do not blur the scaling.

    python benchmarks/batch.py                        # the full run: about 15 minutes on 2 idle cores
    python benchmarks/batch.py --quick --out /tmp/b   # smoke run; its figures mean nothing

Writes <out>/batch.json and <out>/batch.md.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from onnxstyle.autoexport import resolve_models  # noqa: E402
from onnxstyle.workers.pools import LocalWorkers, RayWorkers, Split  # noqa: E402
from onnxstyle.workers.worker import ModelsSource, Outcome, WorkerSpec  # noqa: E402
from onnxstyle.runtime.image_io import load_image  # noqa: E402
from onnxstyle.runtime.providers import cpu_model, physical_cores  # noqa: E402
from onnxstyle.runtime.settings import EngineConfig, RunSettings  # noqa: E402
from onnxstyle.exportdir import export_settings_for# noqa: E402

SHARED = ROOT.parent / "shared" / "images"
TARGETS = {"ray_2x1_over_1x1": 1.7, "ray_2x1_over_local": 1.0}


def content_paths(n: int) -> list[Path]:
    """n content images, cycling through the shared photos (or the bundled one)."""
    photos = sorted(p for p in SHARED.glob("*.jpg") if p.name != "starry_night.jpg") if SHARED.is_dir() else []
    photos = photos or [ROOT / "onnxstyle" / "data" / "tubingen.jpg"]
    return [photos[i % len(photos)] for i in range(n)]


def run_config(kind: str, workers: int, threads: int, spec: WorkerSpec, items: list[Path]) -> dict[str, Any]:
    t0 = time.perf_counter()
    pool: Any = LocalWorkers(spec, Split(workers, threads)) if kind == "local" else RayWorkers(spec, threads, workers, ship=False)
    done: list[float] = []
    failed = 0
    with pool:
        tasks = ((i, (f"{i}-{p.name}", str(p), None)) for i, p in enumerate(items))
        for _, outcome in pool.map_unordered("image", tasks):
            done.append(time.perf_counter() - t0)
            failed += not (isinstance(outcome, Outcome) and outcome.data is not None)
    k = min(workers, len(done) - 1)  # the first round carries start-up and compilation
    steady = 60.0 * (len(done) - k) / max(done[-1] - done[k - 1], 1e-9) if k >= 1 else 60.0 * len(done) / done[-1]
    return {
        "kind": kind, "workers": workers, "threads": threads, "items": len(items), "failed": failed,
        "wall_seconds": done[-1], "first_round_seconds": done[k - 1] if k >= 1 else None,
        "images_per_minute": steady, "images_per_minute_with_startup": 60.0 * len(done) / done[-1], "finish_times": done,
    }


def markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    lines = [
        "# Batch throughput",
        "",
        f"Machine: {report['machine']}, {report['cores']} cores; backend {report['provider']}; {report['date']}; "
        f"load average {report['load_average']:.1f} at the start, {report['load_average_end']:.1f} at the end.",
        f"{s['items']} images at {s['size']} px, {s['iterations']} evaluations each. Command: `{report['command']}`",
        "",
        "Steady images/min: from the end of the first round (one item per worker, which carries start-up and "
        "session compilation) to the last item.",
        "",
        "| configuration | workers × threads | images/min (steady) | images/min (incl. start-up) | wall s | first round s |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in report["configs"].items():
        lines.append(
            f"| {name} | {r['workers']} × {r['threads']} | {r['images_per_minute']:.2f} | {r['images_per_minute_with_startup']:.2f} | "
            f"{r['wall_seconds']:.1f} | {r['first_round_seconds'] or 0:.1f} |"
        )
    ratios = report["ratios"]
    if ratios:
        lines += [""]
        for key, value in ratios.items():
            target = TARGETS.get(key)
            verdict = f" (target ≥ {target}: **{'met' if value >= target else 'missed'}**)" if target else ""
            lines.append(f"- {key.replace('_', ' ')}: {value:.2f}×{verdict}")
    if report.get("quick"):
        lines += ["", "**Smoke run (--quick): these figures mean nothing.**"]
    if max(report["load_average"], report["load_average_end"]) > report["cores"] / 2:
        lines += ["", "**Other work shared the cores during the run (load average above half the cores): the scaling "
                  "figures are a lower bound of what an idle machine gives.**"]
    return "\n".join(lines) + "\n"


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="ray:1x1,ray:2x1,local:2x1,local:1x2", help="kind:WORKERSxTHREADS, comma-separated")
    p.add_argument("--items", type=int, default=8)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--iterations", type=int, default=50)
    p.add_argument("--style", type=Path, default=ROOT / "onnxstyle" / "data" / "starry_night.jpg")
    p.add_argument("--models", type=Path, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--quick", action="store_true", help="smoke run: 6 images at 48 px, 4 evaluations")
    a = p.parse_args()
    if a.quick:
        a.items, a.size, a.iterations = 6, 48, 4
    return a


def main() -> None:
    args = parse()
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    ref = resolve_models(export_settings_for("gatys"), args.models, log=log)
    settings = RunSettings(size=args.size, iterations=args.iterations)
    style = load_image(args.style, args.size)[0]
    spec = WorkerSpec(ModelsSource(str(ref.folder), ref.fix), EngineConfig(device=args.device), [style], settings)
    items = content_paths(args.items)
    load_start = os.getloadavg()[0]
    configs: dict[str, Any] = {}
    ray_started = False
    try:
        for c in args.configs.split(","):
            kind, shape = c.split(":")
            workers, threads = (int(x) for x in shape.split("x"))
            if kind == "ray" and not ray_started:
                import ray

                ray.init(num_cpus=physical_cores(), include_dashboard=False, log_to_driver=False, logging_level="ERROR")
                ray_started = True
            configs[c] = run_config(kind, workers, threads, spec, items)
            log(f"{c}: {configs[c]['images_per_minute']:.2f} images/min steady, {configs[c]['wall_seconds']:.1f}s wall")
    finally:
        if ray_started:
            import ray

            ray.shutdown()
    ratios = {}
    if "ray:1x1" in configs and "ray:2x1" in configs:
        ratios["ray_2x1_over_1x1"] = configs["ray:2x1"]["images_per_minute"] / configs["ray:1x1"]["images_per_minute"]
    if "ray:2x1" in configs and "local:2x1" in configs:
        ratios["ray_2x1_over_local"] = configs["ray:2x1"]["images_per_minute"] / configs["local:2x1"]["images_per_minute"]
    if "local:1x2" in configs and "local:2x1" in configs:
        ratios["local_2x1_over_1x2"] = configs["local:2x1"]["images_per_minute"] / configs["local:1x2"]["images_per_minute"]
    from onnxstyle.runtime.backends import available_backends, select_backend

    report = {
        "machine": cpu_model(), "cores": physical_cores(), "provider": select_backend(available_backends(), spec.config).describe(),
        "date": _dt.datetime.now().isoformat(timespec="seconds"), "load_average": load_start, "load_average_end": os.getloadavg()[0],
        "command": "python benchmarks/batch.py " + " ".join(sys.argv[1:]), "quick": args.quick,
        "settings": {"items": args.items, "size": args.size, "iterations": args.iterations, "style": args.style.name},
        "targets": TARGETS, "configs": configs, "ratios": ratios,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "batch.json").write_text(json.dumps(report, indent=1))
    md = markdown(report)
    (args.out / "batch.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
