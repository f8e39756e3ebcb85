"""The model family the autopilot chooses from: one architecture per objective, scaled in width and depth together.

Each member is the crammed encoder (`bert-crammed`) or the Llama-layout decoder (`gpt-small`) with its depth and
width replaced; heads are 64 wide and the feed-forward keeps the preset's ratio to the width, so every member
exports to `transformers` like its preset. The shapes roughly double the compute per token from one to the next,
from a 2-layer, 128-wide model that trains at tens of thousands of tokens/s on a laptop CPU to a 2048-wide one
for multi-GPU-days; `bert-crammed` itself (16x768) is a member. Members are named `encoder-4x256`,
`decoder-12x768`, ... and `--model` accepts these names like presets.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

SHAPES = ((2, 128), (4, 192), (4, 256), (6, 384), (8, 512), (12, 640), (12, 768), (16, 768), (24, 1024),
          (24, 1536), (32, 2048))
BASE_PRESET = {"encoder": "bert-crammed", "decoder": "gpt-small"}
HEAD_DIM = 64
_NAME = re.compile(r"(encoder|decoder)-(\d+)x(\d+)")


@dataclass(frozen=True)
class Shape:
    arch: str
    n_layers: int
    d_model: int

    @property
    def name(self) -> str:
        return f"{self.arch}-{self.n_layers}x{self.d_model}"

    def model_section(self) -> dict[str, Any]:
        """The preset's `model` section with this depth and width (heads of 64, the preset's FFN ratio)."""
        from cramlm.config import load_preset

        section = dict(load_preset("model", BASE_PRESET[self.arch])["model"])
        ratio = section["d_ff"] / section["d_model"]  # 4 for the encoder's GEGLU, 16/3 for the decoder's SwiGLU
        d_ff = 2 * HEAD_DIM * math.ceil(ratio * self.d_model / (2 * HEAD_DIM))  # even halves, 64-aligned
        section.update(n_layers=self.n_layers, d_model=self.d_model, n_heads=max(1, self.d_model // HEAD_DIM),
                       d_ff=d_ff)
        return section


def family(arch: str) -> list[Shape]:
    """The members for `arch` (encoder or decoder), smallest first."""
    return [Shape(arch, n, d) for n, d in SHAPES]


FAMILY = family("encoder") + family("decoder")


def parse(name: str) -> Shape | None:
    """`encoder-4x256` -> its Shape; None for any other name (a preset)."""
    match = _NAME.fullmatch(name)
    if not match:
        return None
    shape = Shape(match.group(1), int(match.group(2)), int(match.group(3)))
    return shape if shape in FAMILY else None


def names() -> list[str]:
    return [s.name for s in FAMILY]
