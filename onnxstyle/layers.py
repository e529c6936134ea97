"""VGG19's feature layers as plain data: names, kinds, channels and strides (no torch)."""

from __future__ import annotations

# VGG19 "E" configuration: convolutions per block and their channel widths.
VGG19_BLOCKS: tuple[int, ...] = (2, 2, 4, 4, 4)
VGG19_CHANNELS: tuple[int, ...] = (64, 128, 256, 512, 512)


def _layer_table() -> list[tuple[str, str, int, int]]:
    """(name, kind, in_channels, out_channels) for every VGG19 feature layer, in order."""
    table: list[tuple[str, str, int, int]] = []
    cin = 3
    for b, (n, c) in enumerate(zip(VGG19_BLOCKS, VGG19_CHANNELS), start=1):
        for i in range(1, n + 1):
            table.append((f"conv{b}_{i}", "conv", cin, c))
            table.append((f"relu{b}_{i}", "relu", c, c))
            cin = c
        table.append((f"pool{b}", "pool", c, c))
    return table


LAYERS: list[tuple[str, str, int, int]] = _layer_table()
LAYER_NAMES: tuple[str, ...] = tuple(name for name, *_ in LAYERS)
LAYER_INDEX: dict[str, int] = {name: i for i, name in enumerate(LAYER_NAMES)}
LAYER_CHANNELS: dict[str, int] = {name: cout for name, _, _, cout in LAYERS}
CONV_NAMES: tuple[str, ...] = tuple(name for name, kind, *_ in LAYERS if kind == "conv")


def layer_stride(name: str) -> int:
    """Downsampling factor of a layer's output relative to the image."""
    return 2 ** sum(1 for n in LAYER_NAMES[: LAYER_INDEX[name] + 1] if n.startswith("pool"))
