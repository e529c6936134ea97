"""The 4096 px showcase: one `onnxstyle stylize` run on this machine within a memory budget.

    python benchmarks/showcase.py          # about an hour on 2 cores

Runs the real command (coarse-to-fine 512 → 4096, `--max-memory 6G`) in a wrapper that records the
process's peak resident set (VmHWM), then writes a downscaled view and a full-resolution crop for
the README, and what the torch reference would need at that size, extrapolated from its peaks
measured at 512 and 1024 px (benchmarks/results/memory.json: peak = a + b·pixels).
Writes benchmarks/results/showcase.{json,md} and docs/showcase/*.jpg.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from memory import CLI, MARK  # noqa: E402


def torch_at(pixels: int) -> float:
    """Bytes the torch reference would peak at, linear in pixels through its 512 and 1024 px peaks."""
    rows = {r["size"]: r for r in json.loads((ROOT / "benchmarks" / "results" / "memory.json").read_text())["rows"]}
    (p1, m1), (p2, m2) = [(rows[s]["hw"][0] * rows[s]["hw"][1], rows[s]["torch"]["peak"]) for s in (512, 1024)]
    b = (m2 - m1) / (p2 - p1)
    return m1 + b * (pixels - p1)


def run_traced(argv: list[str], evaluations: list[int]) -> tuple[dict, dict[str, int], str]:
    """Run the CLI wrapper; its result, the largest resident set seen in each stage, and the
    tail of its progress output (plain lines, as stderr is not a terminal). Progress lines name
    their stage; a tiled stage's tile lines ("stylizing 300/360 tiles: targets 1/4") give the
    evaluations done, and the evaluation under way belongs to the stage that count reaches."""
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    stage, peaks, lines = ["1"], {}, []
    ends = [sum(evaluations[: i + 1]) for i in range(len(evaluations))]

    def read() -> None:
        for ln in p.stderr:
            lines.append(ln.rstrip())
            named, done = re.search(r"stage (\d+)/\d+", ln), re.search(r"stylizing (\d+)/\d+ tiles:", ln)
            if named:
                stage[0] = named.group(1)
            elif done:
                k = next((i + 1 for i, e in enumerate(ends) if int(done.group(1)) < e), len(ends))
                stage[0] = str(max(int(stage[0]), k))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    while p.poll() is None:
        try:
            rss = next(int(x.split()[1]) * 1024 for x in open(f"/proc/{p.pid}/status") if x.startswith("VmRSS:"))
        except (OSError, StopIteration):
            break
        peaks[stage[0]] = max(peaks.get(stage[0], 0), rss)
        time.sleep(0.25)
    out = p.stdout.read()
    reader.join(5)
    res = json.loads([ln for ln in out.splitlines() if ln.startswith(MARK)][-1][len(MARK):])
    return res, peaks, "\n".join(lines[-20:])


def _estimate(plan: list[str], stage: str) -> str:
    m = [re.search(r"estimated peak (\d+) MiB", ln) for ln in plan if ln.startswith(f"stage {stage}/")]
    return m[0].group(1) if m and m[0] else "?"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--scales", default="512,1024,2048,4096")
    ap.add_argument("--scale-iterations", default="300,150,60,30")
    ap.add_argument("--max-memory", default="6G")
    ap.add_argument("--style", default=str(ROOT.parent / "shared" / "images" / "starry_night.jpg"))
    ap.add_argument("--content", default=str(ROOT.parent / "shared" / "images" / "tubingen.jpg"))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    docs = ROOT / "docs" / "showcase"
    docs.mkdir(parents=True, exist_ok=True)
    png = docs / "tubingen_4096.png"
    cmd = ["stylize", args.content, args.style, "-o", str(png), "--size", str(args.size), "--scales", args.scales,
           "--scale-iterations", args.scale_iterations, "--max-memory", args.max_memory]
    dry = subprocess.run([sys.executable, "-m", "onnxstyle.cli", *cmd, "--dry-run"], capture_output=True, text=True, cwd=ROOT)
    print(dry.stdout, dry.stderr, flush=True)
    t0 = time.monotonic()
    res, stages, tail = run_traced([sys.executable, "-c", CLI, json.dumps(cmd)], [int(v) for v in args.scale_iterations.split(",")])
    wall = time.monotonic() - t0
    img = cv2.imread(str(png))
    h, w = img.shape[:2]
    cv2.imwrite(str(docs / "tubingen_4096_view.jpg"), cv2.resize(img, (1024, round(1024 * h / w)), interpolation=cv2.INTER_AREA), [cv2.IMWRITE_JPEG_QUALITY, 90])
    y, x = h // 3, w // 2
    cv2.imwrite(str(docs / "tubingen_4096_crop.jpg"), img[y : y + 768, x : x + 1024], [cv2.IMWRITE_JPEG_QUALITY, 92])
    png.unlink()  # 30+ MB: the view and the crop are what the README shows
    out = {"command": "onnxstyle " + " ".join(cmd), "exit": res["code"], "peak": res["peak"], "wall_s": wall, "size": [w, h],
           "plan": dry.stdout.strip().splitlines(), "torch_extrapolated": torch_at(w * h),
           "stage_peaks": stages, "stderr": tail}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "showcase.json").write_text(json.dumps(out, indent=1) + "\n")
    md = (f"# {w}x{h} on 2 cores within {args.max_memory}\n\n`{out['command']}`\n\n"
          f"Exit {res['code']}; wall time {wall / 60:.0f} min; peak RSS {res['peak'] / 2**30:.2f} GiB. "
          f"The torch reference, extrapolated from its peaks at 512 and 1024 px: {out['torch_extrapolated'] / 2**30:.1f} GiB.\n\n"
          "Resident set by stage, against the plan (sampled every 0.25 s; a stage's row runs from its first "
          "progress line, which follows its first evaluation, to the next stage's, so it also holds the next "
          "stage's setup: row 1 holds stage 2's targets):\n\n"
          "| stage | peak RSS (MiB) | estimate (MiB) |\n|---|---|---|\n"
          + "".join(f"| {k} | {v / 2**20:.0f} | {_estimate(out['plan'], k)} |\n" for k, v in sorted(stages.items()))
          + "\nPlan:\n\n```\n" + "\n".join(out["plan"]) + "\n```\n")
    (args.out / "showcase.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
