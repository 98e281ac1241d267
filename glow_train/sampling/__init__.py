"""Sampling: plain samples, class grids, latent-space modes and the files they write.

- `images`: samples drawn from the priors at a temperature, grids and rows, the
  class of each image (`sample` is `glow-sample`'s `mode=sample`);
- `formats`: how samples are written for each kind of data (image grids, CSV
  tables) and where (`glow_train.sampling.formats.output_names`);
- `latents`: encoding, decoding, interpolation and attribute directions;
- `registry`: the registry of `glow-sample mode=...` (`MODES`, `run_mode`), the
  forecast of a series model and the latent-space modes.

A new mode is one function `run(ckpt, opts)` made a mode by
`glow_train.modes.command_mode` (which names the options it uses) in
`glow_train.sampling.registry`, and its entry in `MODES`; a new kind of output, one
writer class in `glow_train.sampling.formats` and its entry in `WRITERS`. Every mode
takes keyword options, each left out taking its value in `configs/sample.yaml`.
"""

from glow_train.sampling.formats import WRITERS, ImageSamples, TableSamples, sample_format
from glow_train.sampling.images import (
    LAYOUTS,
    class_choice,
    class_index,
    sample,
    sample_grid,
    sample_images,
    sample_rows,
)
from glow_train.sampling.latents import INTERPOLATIONS, decode, encode, interpolate
from glow_train.sampling.registry import (
    MODES,
    Written,
    forecast_paths,
    interpolate_strip,
    manipulate_strip,
    run_mode,
    save_direction,
)

__all__ = [
    "INTERPOLATIONS",
    "LAYOUTS",
    "MODES",
    "WRITERS",
    "ImageSamples",
    "TableSamples",
    "Written",
    "class_choice",
    "class_index",
    "decode",
    "encode",
    "forecast_paths",
    "interpolate",
    "interpolate_strip",
    "manipulate_strip",
    "run_mode",
    "sample",
    "sample_format",
    "sample_grid",
    "sample_images",
    "sample_rows",
    "save_direction",
]
