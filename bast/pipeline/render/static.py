"""Binaural rendering: every clip at every direction, as batched FFT convolution.

The IR spectra are computed once per bank (and a worker keeps its banks), each clip's
spectrum once per shard; a rendered sample then costs one complex multiply and one inverse
FFT per ear, instead of a full convolution per clip, direction and ear.
"""

from __future__ import annotations

import numpy as np
import scipy.fft as sfft

from bast.errors import ConfigError


class Renderer:
    """Convolve mono clips of `n_out` samples with a bank of IR pairs (A, 2, L).

    The output keeps the clip's length: sample t of the binaural clip is the convolution
    (clip * ir)[t] for t < n_out, i.e. what the ears receive during the clip's 500 ms.
    Taps of an IR beyond n_out cannot reach those samples, so they are dropped.
    """

    def __init__(self, pairs: np.ndarray, n_out: int = 8000):
        pairs = np.asarray(pairs, dtype=np.float32)
        if pairs.ndim != 3 or pairs.shape[1] != 2:
            raise ConfigError(f"IR pairs must be (directions, 2, taps), got {pairs.shape}")
        taps = min(pairs.shape[-1], n_out)
        self.n_out = n_out
        # Linear (not circular) convolution for the first n_out samples needs n_out + taps - 1.
        self.nfft = sfft.next_fast_len(n_out + taps - 1, real=True)
        self.spectra = sfft.rfft(pairs[..., :taps], self.nfft, axis=-1)  # (A, 2, F) complex64
        self.n_azimuths = pairs.shape[0]
        self._out: np.ndarray | None = None

    def _buffer(self, count: int) -> np.ndarray:
        """A reused output buffer: a fresh 100-200 MB array per shard costs the kernel a
        page fault per 4 KB, which measured as much as the FFTs themselves."""
        shape = (count, self.n_azimuths, 2, self.n_out)
        if self._out is None or self._out.shape[0] < count:
            self._out = np.empty(shape, dtype=np.float32)
        return self._out[:count]

    def render(self, clips: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """(C, n_out) mono clips -> (C, A, 2, n_out) float32 binaural clips, in `out` if
        given, else in a buffer that the next call reuses: use (or copy) the result before
        rendering again."""
        clips = np.asarray(clips, dtype=np.float32)
        if clips.ndim != 2 or clips.shape[1] != self.n_out:
            raise ConfigError(f"clips must be (count, {self.n_out}), got {clips.shape}")
        spectra = sfft.rfft(clips, self.nfft, axis=-1)  # (C, F)
        if out is None:
            out = self._buffer(clips.shape[0])
        elif out.shape != (clips.shape[0], self.n_azimuths, 2, self.n_out) or out.dtype != np.float32:
            raise ConfigError(f"out must be float32 {(clips.shape[0], self.n_azimuths, 2, self.n_out)}, got {out.shape}")
        product = np.empty_like(self.spectra)
        for c in range(clips.shape[0]):  # one clip at a time keeps the working set in cache
            np.multiply(self.spectra, spectra[c], out=product)
            out[c] = sfft.irfft(product, self.nfft, axis=-1, overwrite_x=True)[..., : self.n_out]
        return out

    def render_rows(self, clips: np.ndarray, rows) -> np.ndarray:
        """(C, n_out) mono clips, clip c at direction `rows[c]` of the bank -> (C, 2, n_out)
        float32: the samples `render` makes for those (clip, direction) pairs, by the same
        product and inverse FFT (training on the fly draws one direction per clip)."""
        clips = np.asarray(clips, dtype=np.float32)
        if clips.ndim != 2 or clips.shape[1] != self.n_out or len(rows) != clips.shape[0]:
            raise ConfigError(f"clips must be (count, {self.n_out}) with one row each, got {clips.shape}")
        spectra = sfft.rfft(clips, self.nfft, axis=-1)  # (C, F)
        out = np.empty((clips.shape[0], 2, self.n_out), dtype=np.float32)
        for c, row in enumerate(rows):
            out[c] = sfft.irfft(self.spectra[row] * spectra[c], self.nfft, axis=-1)[..., : self.n_out]
        return out

