"""CoordTok tokenizer: presets now; the model lands with the tokenizer issue."""
