"""Video stylization with temporal consistency (Ruder et al. 2016).

``flow``: DIS optical flow both ways, the consistency check, warping. ``temporal``: the
per-frame loop over arrays. ``metrics``: the warping error (Lai et al. 2018) and style and
content distances. ``io``: video files and frame folders (PyAV, imported lazily). ``job``:
a video job over files, resumable frame by frame; the command is :mod:`onnxstyle.commands.video`.
"""
