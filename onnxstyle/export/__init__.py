"""torch → ONNX: graphs, validation against autograd, manifest (needs the `export` extra)."""
