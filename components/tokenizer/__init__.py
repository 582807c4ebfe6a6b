"""CoordTok tokenizer: named presets (`presets`) and the model (`model`).

The model's names are exported lazily so that importing the presets (e.g. from components.config)
does not import torch.
"""

from components.tokenizer.presets import TOKENIZER_PRESETS, TokenizerArch

_MODEL_NAMES = ("CoordTok", "Triplane", "decode_frames", "grid_coords", "patchify", "reconstruct", "unpatchify")

__all__ = ["TOKENIZER_PRESETS", "TokenizerArch", *_MODEL_NAMES]


def __getattr__(name: str):
    if name in _MODEL_NAMES:
        from components.tokenizer import model

        return getattr(model, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
