#!/usr/bin/env bash
# Renders every picture in the README from ../shared/images with the exact commands shown there.
# Takes about 40 minutes on 2 CPU cores. Run from the repository root with onnxstyle installed.
set -euo pipefail
cd "$(dirname "$0")/.."
IMG=../shared/images
mkdir -p docs/gallery docs/presets docs/sweeps

# 1. Gallery: three styles at 384 px, side by side with neural-style's 512 px references.
python docs/make_gallery.py --size 384 --iterations 300

# 2. Our users' first two experiments, as sweeps (PyTorch tutorial preset). With the Caffe weights
#    standing in for torchvision's, torch-style L-BFGS diverges at these weights, so the sheets use
#    the default L-BFGS-B (see README, "Presets").
onnxstyle sweep $IMG/tubingen.jpg $IMG/starry_night.jpg -o docs/sweeps/style_weight.jpg --preset torch-tutorial \
    --vary style-weight=1e2,1e4,1e6 --content-weight 1 --init content --iterations 400 --size 256 --optimizer lbfgs -q
onnxstyle sweep $IMG/tubingen.jpg $IMG/starry_night.jpg -o docs/sweeps/init.jpg --preset torch-tutorial \
    --vary init=content,style,noise --style-weight 1e6 --size 256 --optimizer lbfgs -q

# 3. One row per preset at 256 px.
onnxstyle stylize $IMG/tubingen.jpg $IMG/starry_night.jpg -o docs/presets/gatys.jpg --size 256 -q
onnxstyle stylize $IMG/tubingen.jpg $IMG/starry_night.jpg -o docs/presets/torch-tutorial.jpg --preset torch-tutorial --size 256 --optimizer lbfgs --style-weight 1 -q
onnxstyle stylize $IMG/tubingen.jpg $IMG/starry_night.jpg -o docs/presets/torch-notebook.jpg --preset torch-notebook --size 256 --optimizer lbfgs --style-weight 1 -q
onnxstyle stylize $IMG/tubingen.jpg $IMG/starry_night.jpg -o docs/presets/tf-tutorial.jpg --preset tf-tutorial --size 256 --iterations 300 -q
onnxstyle stylize $IMG/tubingen.jpg $IMG/starry_night.jpg -o docs/presets/keras-example.jpg --preset keras-example --size 256 -q
python - <<'PY'
import cv2, numpy as np
names = ["gatys", "torch-tutorial", "torch-notebook", "tf-tutorial", "keras-example"]
panels = []
for n in names:
    im = cv2.imread(f"docs/presets/{n}.jpg")
    im = cv2.resize(im, (round(im.shape[1] * 192 / im.shape[0]), 192), interpolation=cv2.INTER_AREA)
    cv2.rectangle(im, (0, 0), (im.shape[1], 20), (0, 0, 0), -1)
    cv2.putText(im, n, (5, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    panels.append(im)
cv2.imwrite("docs/presets/row.jpg", np.hstack(panels), [cv2.IMWRITE_JPEG_QUALITY, 88])
PY
