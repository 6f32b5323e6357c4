"""Training on the fly with the expensive part on the training device: the FFT convolution
and the feature STFT, batched in torch (docs/train.md "Training on the fly", --render-device).

The loader's workers (or the training process) draw and prepare each batch as numpy
(`sampler.prepare_batch`: the clip policy's clip with its gain and onset shift, which IR
row renders it, the noise window and its SNR): the cheap part. Here, on the device, the
whole batch is then convolved (rfft of the clips times the IR spectra of their rows, which
stay on the device, irfft, the first 8000 samples, as `Renderer.render_rows`), the noise
is mixed at its SNR (as `noise.mix_at_snr`: onto the binaural audio), and the features
computed as Stage 2 computes them (bast/pipeline/features/stft.py: scipy's spectrogram with
a periodic Tukey(0.25) window, 256 samples every 128, no padding, each segment's mean
removed, density scaling; dB floored; the interaural phase's cos and sin, 0 where either
ear's bin is at the floor) and stored as Stage 2 stores them (float16).

The STFT runs in float64, as stft.py's (its float32 drifts by more than 0.01 dB in bins 100
dB under a strong component); the convolution in float32, as the renderer's. The pure
functions (`convolve`, `mix_at_snr`, `spectrogram_and_phase`, `spectrogram_db`, `stacked`)
take and give tensors and can be tested alone against their numpy twins.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.signal import get_window

from bast.conventions import FS
from bast.errors import ConfigError, DataError
from bast.pipeline.features import kinds as featurekinds
from bast.pipeline.features.stft import NOVERLAP, NPERSEG, WINDOW
from bast.pipeline.render.noise import NO_NOISE

# The kinds computed here (others are computed by the workers' numpy path only).
DEVICE_KINDS = ("logpower", "phase")
RENDER_PLACES = ("auto", "workers", "device")


def check_kinds(names) -> None:
    """A ConfigError naming a feature kind this module cannot compute on the device."""
    other = [n for n in names if n not in DEVICE_KINDS]
    if other:
        raise ConfigError(f"feature kind(s) {', '.join(other)} are computed by the loader workers only; "
                          f"use --set render_device=workers (the device computes {', '.join(DEVICE_KINDS)})")


def resolve_place(place: str, device) -> str:
    """`render_device` auto -> device on CUDA, workers elsewhere."""
    if place not in RENDER_PLACES:
        raise ConfigError(f"render_device must be one of {', '.join(RENDER_PLACES)}, not {place!r}")
    if place == "auto":
        return "device" if torch.device(device).type == "cuda" else "workers"
    return place


# ----------------------------------------------------------------------------- convolution
def convolve(clips: torch.Tensor, spectra: torch.Tensor, nfft: int, n_out: int) -> torch.Tensor:
    """Mono clips (B, n) float32 through IR pairs given as spectra (B, 2, nfft//2+1)
    complex64 -> binaural (B, 2, n_out) float32: the linear convolution's first n_out
    samples (nfft >= n + taps - 1), as `Renderer.render_rows`."""
    x = torch.fft.rfft(clips.float(), nfft, dim=-1)  # (B, F)
    return torch.fft.irfft(spectra * x[:, None, :], nfft, dim=-1)[..., :n_out].contiguous()


def ir_spectra(pairs: torch.Tensor, n_out: int) -> tuple[torch.Tensor, int]:
    """IR pairs (A, 2, taps) -> (their spectra (A, 2, F) complex64, nfft), as `Renderer`
    makes them: taps beyond n_out dropped, nfft the next fast length >= n_out + taps - 1."""
    import scipy.fft as sfft

    taps = min(pairs.shape[-1], n_out)
    nfft = sfft.next_fast_len(n_out + taps - 1, real=True)
    return torch.fft.rfft(pairs[..., :taps].float(), nfft, dim=-1), nfft


def mix_at_snr(clean: torch.Tensor, noise: torch.Tensor, levels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(clean + noise scaled to the SNR `levels` (B,) dB over both ears, the SNRs): as
    `noise.mix_at_snr`, with +inf levels (no noise drawn) and silent samples left clean."""
    k = clean.shape[0]
    e_clean = clean.double().square().reshape(k, -1).sum(dim=1)
    e_noise = noise.double().square().reshape(k, -1).sum(dim=1)
    levels = levels.double()
    ok = (e_clean > 0) & (e_noise > 0) & torch.isfinite(levels)
    gain = torch.where(ok, torch.sqrt(e_clean / e_noise.clamp_min(1e-300) / 10 ** (levels.clamp_max(1e300) / 10)), 0.0)
    mixed = clean + noise * gain.float()[:, None, None]
    return mixed, torch.where(ok, levels, NO_NOISE).float()


# ----------------------------------------------------------------------------- STFT
_CACHE: dict = {}


def _constants(device, dtype):
    """(window, the density scale per frequency) on `device`, as stft.py's."""
    key = (str(device), dtype)
    if key not in _CACHE:
        window = get_window(WINDOW, NPERSEG, fftbins=True)  # periodic, scipy's own
        scale = np.full(NPERSEG // 2 + 1, 2.0 / (FS * np.sum(window**2)))
        scale[[0, -1]] /= 2  # DC and Nyquist are not doubled
        w = torch.as_tensor(window, dtype=dtype, device=device)
        _CACHE[key] = (w, torch.as_tensor(scale, dtype=torch.float64, device=device))
    return _CACHE[key]


def stft(x: torch.Tensor, dtype=torch.float64) -> torch.Tensor:
    """Complex STFT (C, 129, T) of rows x (C, samples): frames of 256 every 128 without
    padding, each frame's mean removed before the window (scipy's detrend='constant'), no
    density scale. The frames are cut and transformed as torch.stft(center=False) would,
    with the mean removed between: on a CPU four times as fast as torch.stft and then the
    mean's correction (measured), on a GPU the same kernels."""
    return _stft(x, dtype).transpose(1, 2)


def _stft(x: torch.Tensor, dtype) -> torch.Tensor:
    """The STFT as (C, T, 129): frame-major, as the FFT makes it (transposed at the end)."""
    w, _ = _constants(x.device, dtype)
    x, hop = x.to(dtype), NPERSEG - NOVERLAP
    frames = x.unfold(-1, NPERSEG, hop)  # (C, T, 256), a view
    # each frame's mean from the sums of the hop-sized blocks (a frame is two blocks), as
    # stft.py: a sum over every frame's 256 values costs more than the FFT on a CPU
    t = frames.shape[1]
    blocks = x[:, : (t + 1) * hop].reshape(x.shape[0], t + 1, hop).sum(dim=-1)
    means = (blocks[:, :-1] + blocks[:, 1:]) / NPERSEG
    return torch.fft.rfft((frames - means[..., None]) * w, dim=-1)


def _power_and_floor(spec: torch.Tensor, floor_db: float) -> tuple[torch.Tensor, torch.Tensor]:
    """|X|^2 (C, T, 129) and the floor per frequency (129,), both before the density scale."""
    _, scale = _constants(spec.device, spec.real.dtype)
    power = spec.real.square().addcmul_(spec.imag, spec.imag)
    return power, (10.0 ** (floor_db / 10.0) / scale).to(spec.real.dtype)


def _db(power: torch.Tensor, floor: torch.Tensor) -> torch.Tensor:
    """(C, 129, T) float32 dB of power (C, T, 129): as stft.py, 10 log10(max(p, floor / s))
    in float32, plus 10 log10(s)."""
    _, scale = _constants(power.device, power.dtype)
    db = 10.0 * torch.log10(torch.maximum(power, floor).float()) + (10 * torch.log10(scale)).float()
    return db.transpose(1, 2)


def spectrogram_db(audio: torch.Tensor, floor_db: float, dtype=torch.float64) -> torch.Tensor:
    """Log-power spectrograms (B, 2, 129, frames) float32 in dB of audio (B, 2, samples)."""
    b, c, n = audio.shape
    power, floor = _power_and_floor(_stft(audio.reshape(b * c, n), dtype), floor_db)
    return _db(power, floor).reshape(b, c, power.shape[2], power.shape[1])


def spectrogram_and_phase(audio: torch.Tensor, floor_db: float, dtype=torch.float64):
    """(db, phase), both (B, 2, 129, frames) float32, of binaural audio (B, 2, samples):
    as stft.spectrogram_and_phase, from one STFT. cos and sin of the angle of L conj(R) are
    its real and imaginary parts over |L| |R| = sqrt(|L|^2 |R|^2), with real arithmetic."""
    if audio.ndim != 3 or audio.shape[1] != 2:
        raise DataError(f"binaural audio must be (batch, 2, samples), got {tuple(audio.shape)}")
    b, _, n = audio.shape
    spec = _stft(audio.reshape(2 * b, n), dtype)
    power, floor = _power_and_floor(spec, floor_db)
    db = _db(power, floor).reshape(b, 2, power.shape[2], power.shape[1])
    lr, li, rr, ri = spec.real[0::2], spec.imag[0::2], spec.real[1::2], spec.imag[1::2]
    left, right = power[0::2], power[1::2]
    audible = (left > floor) & (right > floor)
    inverse = torch.where(audible, torch.rsqrt(torch.where(audible, left * right, 1.0)), 0.0)
    cos = (lr * rr + li * ri) * inverse
    sin = (li * rr - lr * ri) * inverse
    return db, torch.stack([cos, sin], dim=1).float().transpose(2, 3)


def stacked(names, audio: torch.Tensor, floor_db: float, dtype: str = "float16") -> torch.Tensor:
    """The kinds `names` of audio (B, 2, samples) as Stage 2 stores them, stacked as
    channels (B, channels, 129, frames): each kind in its own storage type (the phase
    float16) or `dtype`, as the workers' `Featurizer`."""
    check_kinds(names)
    if "phase" in names:
        db, phase = spectrogram_and_phase(audio, floor_db)
        parts = {"logpower": db, "phase": phase}
    else:
        parts = {"logpower": spectrogram_db(audio, floor_db)}
    stored = [parts[n].to(getattr(torch, featurekinds.get(n).dtype or dtype)) for n in names]
    if len({p.dtype for p in stored}) > 1:  # as np.concatenate: the wider type
        stored = [p.float() for p in stored]
    return torch.cat(stored, dim=1)


# ----------------------------------------------------------------------------- batches
class DeviceRenderer:
    """Renders `Prepared` batches on `device`: the IR spectra of each bank Stage 1 rendered
    with (`SampleRenderer.bank_renderer`: the same complex64 spectra as the numpy path)
    move to the device once and stay; the clips of a batch are convolved bank by bank."""

    def __init__(self, renderer, device):
        self.renderer, self.device = renderer, torch.device(device)
        self._banks: dict[int, tuple[torch.Tensor, int]] = {}

    def bank(self, bank: int) -> tuple[torch.Tensor, int]:
        if bank not in self._banks:
            r = self.renderer.bank_renderer(bank)
            self._banks[bank] = (torch.from_numpy(np.ascontiguousarray(r.spectra)).to(self.device), r.nfft)
        return self._banks[bank]

    def render(self, prepared) -> tuple[torch.Tensor, torch.Tensor]:
        """(audio (B, 2, n) float32 on the device, the SNRs (B,)) of a `Prepared` batch."""
        clips = torch.from_numpy(prepared.clips).to(self.device, non_blocking=True)
        n = clips.shape[-1]
        audio = torch.empty((clips.shape[0], 2, n), dtype=torch.float32, device=self.device)
        banks, rows = prepared.banks, prepared.rows
        for bank in np.unique(banks):
            at = np.flatnonzero(banks == bank)
            index = torch.from_numpy(at).to(self.device)
            if bank >= 0:
                spectra, nfft = self.bank(int(bank))
                spectra = spectra[torch.from_numpy(rows[at]).to(self.device)]
                audio[index] = convolve(clips[index], spectra, nfft, n)
                continue
            for taps in sorted({prepared.pairs[rows[i]].shape[-1] for i in at}):  # pairs of one length at a time
                some = [i for i in at if prepared.pairs[rows[i]].shape[-1] == taps]
                pairs = torch.from_numpy(np.stack([prepared.pairs[rows[i]] for i in some])).to(self.device)
                spectra, nfft = ir_spectra(pairs, n)
                audio[torch.from_numpy(np.array(some)).to(self.device)] = convolve(clips[some], spectra, nfft, n)
        levels = torch.from_numpy(prepared.levels).to(self.device)
        if prepared.noise is None:
            return audio, levels
        return mix_at_snr(audio, torch.from_numpy(prepared.noise).to(self.device, non_blocking=True), levels)
