"""Torch side: the VGG19 definition and its weight sources (only imported for export)."""
