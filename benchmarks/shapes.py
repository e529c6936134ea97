"""Few shapes, few compiles: 20 photos of distinct aspect ratios through `batch` and `serve`.

For each front end, a fresh compiled cache (``ONNXSTYLE_CACHE``) and the cache's event log
(``ONNXSTYLE_CACHE_LOG``: one line per compile or load, with its seconds) give:

* compiles per graph (a compile is a cache miss: OpenVINO wrote a blob), and their seconds;
* loads from the cache (hits) and their seconds;
* the cache's bytes at the end;
* whether every output has exactly the requested size (the size ``fit_size`` gives the photo).

``--exact`` runs the same workload with the shape grid off (``shape_grid`` False in the
settings), for the before/after comparison.

    python benchmarks/shapes.py --models DIR                # batch and serve, 192 px, 2 evaluations
    python benchmarks/shapes.py --models DIR --size 512 --frontends batch

Writes <out>/shapes.json and <out>/shapes.md.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHARED = ROOT.parent / "shared" / "images"
# Width:height of the 20 photos: phone (4:3, 3:4), camera (3:2, 2:3), video stills (16:9, 9:16),
# square, 5:4 and 4:5 prints, panoramas (2:1, 21:9, 3:1) and tall crops, and odd crops between.
RATIOS = (4 / 3, 3 / 4, 3 / 2, 2 / 3, 16 / 9, 9 / 16, 1.0, 5 / 4, 4 / 5, 2.0, 1 / 2, 21 / 9, 3.0, 1 / 3,
          1.1, 0.9, 1.6, 0.6, 2.5, 0.45)


def make_photos(folder: Path) -> list[Path]:
    """Crops of the shared photos at each ratio (JPEG, as phones write them)."""
    from PIL import Image

    sources = [Image.open(SHARED / n).convert("RGB") for n in ("tubingen.jpg", "shipwreck.jpg", "hoovertowernight.jpg")]
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, r in enumerate(RATIOS):
        src = sources[i % len(sources)]
        w, h = src.size
        cw, ch = (w, round(w / r)) if w / r <= h else (round(h * r), h)
        left, top = (w - cw) // 2, (h - ch) // 2
        p = folder / f"photo{i:02d}_{cw}x{ch}.jpg"
        src.crop((left, top, left + cw, top + ch)).save(p, quality=92)
        out.append(p)
    return out


def _env(cache: Path, log: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"ONNXSTYLE_CACHE": str(cache), "ONNXSTYLE_CACHE_LOG": str(log), "PYTHONPATH": str(ROOT)})
    return env


def run_batch(models: Path, photos: Path, style: Path, out: Path, env: dict[str, str], size: int, evals: int, exact: bool) -> float:
    code = "from onnxstyle.cli import main; main()"
    if exact:  # the same command with the grid off: batch's settings builder patched in-process
        code = ("import onnxstyle.runtime.settings as s, dataclasses\n"
                "orig = s.preset_run_settings\n"
                "s.preset_run_settings = lambda *a, **k: orig(*a, **{**k, 'shape_grid': False})\n"
                "from onnxstyle.cli import main; main()")
    cmd = [sys.executable, "-c", code, "batch", str(photos), str(style), "-o", str(out), "--models", str(models),
           "--size", str(size), "--iterations", str(evals), "--workers", "1", "-q"]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"batch failed ({r.returncode}): {r.stderr[-2000:]}")
    return time.perf_counter() - t0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_serve(models: Path, photos: list[Path], style: Path, out: Path, env: dict[str, str], size: int, evals: int, exact: bool) -> float:
    import httpx

    port = _free_port()
    prelude = ""
    if exact:
        prelude = ("import onnxstyle.runtime.settings as s\n"
                   "orig = s.preset_run_settings\n"
                   "s.preset_run_settings = lambda *a, **k: orig(*a, **{**k, 'shape_grid': False})\n")
    code = prelude + "from onnxstyle.cli import main; main()"
    data = out.parent / f"serve-data-{'exact' if exact else 'grid'}"
    cmd = [sys.executable, "-c", code, "serve", "--models", str(models), "--data", str(data), "--port", str(port), "--workers", "1", "--queue", "64"]
    log = open(out.parent / f"serve-{'exact' if exact else 'grid'}.log", "wb")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        t0 = time.perf_counter()
        with httpx.Client(base_url=url, timeout=60) as client:
            ids = []
            for p in photos:
                files = [("content", (p.name, p.read_bytes(), "image/jpeg")), ("style", (style.name, style.read_bytes(), "image/jpeg"))]
                r = client.post("/v1/jobs", files=files, data={"settings": json.dumps({"size": size, "iterations": evals})})
                r.raise_for_status()
                ids.append((p, r.json()["id"]))
            out.mkdir(parents=True, exist_ok=True)
            for p, job in ids:
                while (status := client.get(f"/v1/jobs/{job}").json()["status"]) not in ("done", "failed", "cancelled"):
                    time.sleep(0.2)
                if status != "done":
                    raise SystemExit(f"serve job for {p.name} ended {status}")
                (out / (p.stem + ".png")).write_bytes(client.get(f"/v1/jobs/{job}/result").content)
        return time.perf_counter() - t0
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def summarize(log: Path, cache: Path, photos: list[Path], out: Path, size: int, seconds: float) -> dict[str, Any]:
    from PIL import Image

    from onnxstyle.runtime.image_io import fit_size

    events = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
    compiles: dict[str, int] = Counter()
    compile_s: dict[str, float] = defaultdict(float)
    loads: dict[str, int] = Counter()
    load_s: dict[str, float] = defaultdict(float)
    for e in events:
        graph = e["folder"].split("-")[0]
        if e["compiled"]:
            compiles[graph] += 1
            compile_s[graph] += e["seconds"]
        else:
            loads[graph] += 1
            load_s[graph] += e["seconds"]
    cache_bytes = sum(p.stat().st_size for p in cache.rglob("*") if p.is_file())
    exact = 0
    for p in photos:
        w, h = Image.open(p).size
        want = fit_size(h, w, size)
        got = Image.open(out / (p.stem + ".png")).size[::-1]
        exact += got == want
    return {
        "photos": len(photos), "outputs_of_exact_size": exact, "wall_s": round(seconds, 1),
        "compiles": dict(compiles), "compile_s": {k: round(v, 2) for k, v in compile_s.items()},
        "loads": dict(loads), "load_s": {k: round(v, 2) for k, v in load_s.items()},
        "cache_mb": round(cache_bytes / 1e6, 1),
    }


def machine_line() -> str:
    from onnxstyle.runtime.providers import cpu_model, physical_cores

    return f"{cpu_model()}, {physical_cores()} cores, load average {os.getloadavg()[0]:.2f} at start"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=Path, required=True)
    ap.add_argument("--size", type=int, default=192)
    ap.add_argument("--evals", type=int, default=2)
    ap.add_argument("--frontends", default="batch,serve")
    ap.add_argument("--modes", default="grid,exact")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="shapes-"))
    photos = make_photos(work / "photos")
    style = SHARED / "starry_night.jpg"
    results: dict[str, Any] = {"machine": machine_line(), "size": args.size, "evals": args.evals,
                               "ratios": [round(r, 3) for r in RATIOS], "runs": {}}
    for front in args.frontends.split(","):
        for mode in args.modes.split(","):
            tag = f"{front}-{mode}"
            cache, log, out = work / f"cache-{tag}", work / f"log-{tag}.jsonl", work / f"out-{tag}"
            env = _env(cache, log)
            runner = run_batch if front == "batch" else run_serve
            photos_arg: Any = work / "photos" if front == "batch" else photos
            seconds = runner(args.models, photos_arg, style, out, env, args.size, args.evals, mode == "exact")
            results["runs"][tag] = summarize(log, cache, photos, out, args.size, seconds)
            print(tag, json.dumps(results["runs"][tag]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "shapes.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out / "shapes.md").write_text(report(results))


def report(r: dict[str, Any]) -> str:
    lines = [
        "# Compiles and cache for 20 aspect ratios (`benchmarks/shapes.py`)", "",
        f"{r['machine']}; {r['size']} px, {r['evals']} evaluations per photo; a fresh compiled cache per row. "
        "grid: the shape grid on (what batch and serve do); exact: every photo at its own shape.", "",
        "| front end | mode | compiles (features / loss_grad) | compile s | loads from cache | cache | outputs of exact size | wall |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for tag, x in r["runs"].items():
        front, mode = tag.split("-")
        c, cs = x["compiles"], x["compile_s"]
        lines.append(
            f"| {front} | {mode} | {c.get('features', 0)} / {c.get('loss_grad', 0)} | "
            f"{cs.get('features', 0):.1f} / {cs.get('loss_grad', 0):.1f} | {sum(x['loads'].values())} | {x['cache_mb']:.0f} MB | "
            f"{x['outputs_of_exact_size']}/{x['photos']} | {x['wall_s']:.0f} s |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
