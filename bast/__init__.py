"""bast: binaural sound localization with the Binaural Audio Spectrogram Transformer."""

__version__ = "0.1.0"
