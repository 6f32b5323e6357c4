"""The procedural default corpus: listing, reproducibility, and that each kind of sound
has the spectrum and envelope its name promises."""

import json
import shutil
from collections import Counter

import numpy as np
import pytest
import soundfile as sf
from scipy import signal

from bast.datasets import RECIPES, ClipError, ClipRef, load_clip
from bast.datasets import procedural as P
from bast.datasets import speech as S

FS = P.FS
HAVE_ESPEAK = S.available()
needs_espeak = pytest.mark.skipif(not HAVE_ESPEAK, reason="espeak-ng is not installed here (CI installs it)")


def clips(kind, n=6, seed=0):
    """n clips of one kind, straight from the generator (indices 0..n-1)."""
    return [P.synthesise(kind, seed, i).astype(np.float64) for i in range(n)]


def active(x):
    """The stretch of x from the first to the last sample above -60 dB of its peak."""
    nz = np.flatnonzero(np.abs(x) > 1e-3 * np.abs(x).max())
    return x[nz[0] : nz[-1] + 1]


def power_per_hz(x, lo, hi):
    spec = np.abs(np.fft.rfft(x)) ** 2
    f = np.fft.rfftfreq(x.size, 1 / FS)
    return spec[(f >= lo) & (f < hi)].mean()


def energy_fraction(x, lo, hi):
    spec = np.abs(np.fft.rfft(x)) ** 2
    f = np.fft.rfftfreq(x.size, 1 / FS)
    return spec[(f >= lo) & (f <= hi)].sum() / spec.sum()


def span_80_octaves(x):
    """Width in octaves between the frequencies below which 10 % and 90 % of the energy lie."""
    spec = np.abs(np.fft.rfft(x)) ** 2
    f = np.fft.rfftfreq(x.size, 1 / FS)
    cum = np.cumsum(spec) / spec.sum()
    f10, f90 = f[np.searchsorted(cum, 0.1)], f[np.searchsorted(cum, 0.9)]
    return np.log2(f90 / max(f10, 1.0))


def crest(x):
    a = active(x)
    return np.abs(a).max() / np.sqrt(np.mean(a**2))


# ---------------------------------------------------------------- listing


def test_registered_as_default():
    assert RECIPES["default"] is P.DefaultCorpus
    assert P.DefaultCorpus.name == "default"


@pytest.mark.parametrize("speech", [False, None])
def test_listing_is_balanced_unique_and_loadable(speech):
    refs = P.DefaultCorpus(n_clips=200, seed=3, speech=speech).list_clips()
    assert len(refs) == 200
    counts = Counter(r.category for r in refs)
    assert len(counts) >= 8
    assert set(counts) >= set(P.KINDS)
    assert max(counts.values()) - min(counts.values()) <= 1
    assert ("speech" in counts) == (HAVE_ESPEAK and speech is None)
    assert len({r.clip_id for r in refs}) == 200
    for i, r in enumerate(refs):
        assert r.recipe == "default"
        assert r.clip_id == f"default/{r.category}-{i:05d}"
        spec = json.loads(r.locator)
        assert spec == {"kind": r.category, "index": i, "seed": 3}


def test_listing_synthesises_nothing(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("list_clips synthesised audio")

    for kind in P.KINDS:
        monkeypatch.setitem(P.KINDS, kind, boom)
    monkeypatch.setattr(S, "speak", boom)
    monkeypatch.setattr(S, "_espeak", boom)
    assert len(P.DefaultCorpus(n_clips=5000).list_clips()) == 5000
    with pytest.raises(AssertionError):
        load_clip(P.DefaultCorpus(n_clips=1, speech=False).list_clips()[0])


def test_load_is_deterministic_and_independent_of_n_clips():
    small = P.DefaultCorpus(n_clips=12, seed=7, speech=False).list_clips()
    large = P.DefaultCorpus(n_clips=40, seed=7, speech=False).list_clips()
    for a, b in zip(small, large):
        assert a == b
        xa, fs_a = load_clip(a)
        xb, fs_b = load_clip(b)
        assert fs_a == fs_b == 16000
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(xa, P.DefaultCorpus.load(a)[0])
    # clips of the same kind are different sounds
    assert not np.array_equal(load_clip(small[0])[0], load_clip(small[10])[0])


def test_different_seeds_differ():
    a = P.DefaultCorpus(n_clips=10, seed=0, speech=False).list_clips()
    b = P.DefaultCorpus(n_clips=10, seed=1, speech=False).list_clips()
    for ra, rb in zip(a, b):
        assert ra.clip_id == rb.clip_id and ra.locator != rb.locator
        assert not np.allclose(load_clip(ra)[0], load_clip(rb)[0])


def test_bad_locators_raise_clip_error():
    for locator in ("not json", "[1, 2]", '{"kind":"white_noise"}', '{"kind":"gong","index":0,"seed":0}',
                    '{"kind":"white_noise","index":-1,"seed":0}'):
        with pytest.raises(ClipError):
            load_clip(ClipRef("default/x", "default", locator))


def test_invalid_arguments():
    with pytest.raises(ValueError):
        P.DefaultCorpus(n_clips=-1)
    with pytest.raises(ValueError):
        P.DefaultCorpus(seed=-2)


# ---------------------------------------------------------------- every kind


@pytest.mark.parametrize("kind", list(P.KINDS))
def test_every_kind_is_a_valid_clip(kind):
    for i in range(25):
        x = P.synthesise(kind, 0, i)
        assert x.shape == (8000,) and x.dtype == np.float32
        assert np.all(np.isfinite(x))
        assert np.abs(x).max() <= 1.0
        assert np.sqrt(np.mean(x.astype(np.float64) ** 2)) > 1e-3


def test_kinds_are_many_and_distinct():
    assert len(P.KINDS) >= 8
    for name in P.KINDS:
        assert name == name.lower() and " " not in name


# ---------------------------------------------------------------- spectra and envelopes


def test_noise_colours():
    """Power per Hz, 0.25-0.5 kHz over 4-8 kHz: ~0 dB white, ~12 dB pink, ~24 dB brown."""

    def tilt_db(x):
        return 10 * np.log10(power_per_hz(x, 250, 500) / power_per_hz(x, 4000, 8000))

    for x in clips("white_noise"):
        assert abs(tilt_db(x)) < 10 * np.log10(3)
    for x in clips("pink_noise"):
        assert 7 < tilt_db(x) < 17
    for x in clips("brown_noise"):
        assert tilt_db(x) > 20


@pytest.mark.parametrize("centre,width", [(300, 1 / 3), (1000, 1.0), (2500, 2 / 3), (5000, 2.0)])
def test_bandpass_noise_stays_in_its_band(centre, width):
    lo, hi = centre * 2 ** (-width / 2), min(centre * 2 ** (width / 2), 0.975 * FS / 2)
    for i in range(3):
        x = P.bandpass_noise(np.random.default_rng([5, i]), centre_hz=centre, width_oct=width).astype(np.float64)
        assert energy_fraction(x, lo, hi) > 0.8


def test_random_bandpass_noise_is_narrow_and_white_is_not():
    for x in clips("bandpass_noise", n=10):
        assert span_80_octaves(x) < 2.0
    for x in clips("white_noise", n=3) + clips("pink_noise", n=3):
        assert span_80_octaves(x) > 2.5


def spectral_peaks(x, floor_db=-40):
    """Frequencies (Hz) of the spectral peaks within floor_db of the largest."""
    a = active(x)
    n = 1 << 16
    mag = np.abs(np.fft.rfft(a * signal.windows.blackmanharris(a.size), n))
    db = 20 * np.log10(mag / mag.max() + 1e-12)
    f = np.fft.rfftfreq(n, 1 / FS)
    idx, _ = signal.find_peaks(db, height=floor_db, prominence=20)
    return f[idx]


def assert_harmonic(peaks, f0):
    assert len(peaks) >= 3
    ratio = peaks / f0
    np.testing.assert_allclose(ratio, np.round(ratio), atol=0.03)
    assert np.all(np.round(ratio) >= 1)


@pytest.mark.parametrize("f0", [97.0, 211.0, 380.0])
def test_harmonic_complex_with_known_f0(f0):
    x = P.harmonic(np.random.default_rng([1, int(f0)]), f0=f0).astype(np.float64)
    assert_harmonic(spectral_peaks(x), f0)


def test_random_harmonic_complexes_peak_on_multiples_of_their_lowest_peak():
    for x in clips("harmonic", n=8):
        peaks = spectral_peaks(x)
        assert 75 < peaks[0] < 420
        assert_harmonic(peaks, peaks[0])
        assert peaks.max() < 7600
    # and noise does not pass as harmonic
    with pytest.raises(AssertionError):
        peaks = spectral_peaks(clips("white_noise", n=1)[0])
        assert_harmonic(peaks, peaks[0])


def peak_track(x):
    """STFT peak frequency of each frame with energy within 20 dB of the loudest frame."""
    f, _, z = signal.stft(active(x), FS, nperseg=512, noverlap=384)
    power = np.abs(z) ** 2
    energy = power.sum(axis=0)
    keep = energy > energy.max() * 10 ** (-20 / 10)
    return f[np.argmax(power[:, keep], axis=0)]


def monotonic_fraction(track):
    steps = np.diff(track)
    direction = np.sign(track[-1] - track[0])
    return np.mean(steps * direction >= 0)


@pytest.mark.parametrize("f_start,f_end,log", [(200, 4000, True), (6000, 500, False), (300, 2500, False)])
def test_sweep_with_known_range(f_start, f_end, log):
    x = P.sweep(np.random.default_rng(9), f_start=f_start, f_end=f_end, log=log).astype(np.float64)
    track = peak_track(x)
    assert monotonic_fraction(track) > 0.95
    assert np.sign(track[-1] - track[0]) == np.sign(f_end - f_start)
    assert track[0] == pytest.approx(f_start, rel=0.3, abs=100)
    assert track[-1] == pytest.approx(f_end, rel=0.3, abs=100)


def test_random_sweeps_move_monotonically_over_an_octave_or_more():
    for x in clips("sweep", n=8):
        track = peak_track(x)
        assert monotonic_fraction(track) > 0.95
        assert abs(np.log2(track[-1] / track[0])) > 1.0
    # a steady tone does not
    track = peak_track(clips("am_tone", n=1)[0])
    assert abs(np.log2(track[-1] / track[0])) < 0.2


def test_am_tone_is_narrowband_and_modulated():
    for x in clips("am_tone", n=6):
        assert span_80_octaves(x) < 0.2
        a = active(x)
        env = np.abs(signal.hilbert(a))
        env = env[len(env) // 10 : -len(env) // 10]  # away from the ramps
        assert env.max() > 2 * np.percentile(env, 5)  # depth >= 50 %: (1+m)/(1-m) >= 3


def test_clicks_and_impacts_are_peaky():
    noise = np.median([crest(x) for x in clips("white_noise", n=8)])
    assert 3 < noise < 5
    assert np.median([crest(x) for x in clips("clicks", n=8)]) > 2 * noise
    assert np.median([crest(x) for x in clips("impact", n=8)]) > 1.5 * noise
    for kind in ("harmonic", "am_tone", "sweep"):  # steady sounds are not
        assert np.median([crest(x) for x in clips(kind, n=8)]) < noise


def test_impacts_decay():
    for x in clips("impact", n=6):
        a = active(x)
        q = len(a) // 4
        assert np.sum(a[:q] ** 2) > 10 * np.sum(a[-q:] ** 2)


def periodicity(x):
    """Largest normalised autocorrelation of the differenced (whitened) sound at lags of
    pitch periods 2.5-14 ms: near 1 for a pulse train, near 0 for noise of any colour."""
    a = np.diff(active(x))
    r = np.correlate(a, a, "full")[a.size - 1 :]
    return (r / r[0])[FS // 400 : FS // 70].max()


def test_vowels_are_voiced_and_low_heavy():
    voiced = [periodicity(x) for x in clips("vowel", n=10)]
    assert min(voiced) > 0.2 and np.median(voiced) > 0.6
    for kind in ("white_noise", "pink_noise", "brown_noise"):
        assert max(periodicity(x) for x in clips(kind, n=4)) < 0.15
    for x in clips("vowel", n=6):
        assert 10 * np.log10(power_per_hz(x, 250, 1000) / power_per_hz(x, 4000, 8000)) > 15


# ---------------------------------------------------------------- speech


@needs_espeak
def test_speech_clip_from_espeak():
    refs = P.DefaultCorpus(n_clips=33, seed=0).list_clips()
    speech = [r for r in refs if r.category == "speech"]
    assert len(speech) == 3
    counts = Counter(r.category for r in refs)
    assert len(counts) == len(P.KINDS) + 1 and max(counts.values()) - min(counts.values()) <= 1
    for r in speech:
        x, fs = load_clip(r)
        assert fs == 16000 and x.shape == (8000,) and x.dtype == np.float32
        assert np.all(np.isfinite(x)) and np.abs(x).max() <= 1.0
        assert np.sqrt(np.mean(x.astype(np.float64) ** 2)) > 1e-3
        np.testing.assert_array_equal(x, load_clip(r)[0])
        # speech is broadband-ish and voiced: most energy below 4 kHz, yet not a tone
        assert energy_fraction(x.astype(np.float64), 80, 4000) > 0.5
        assert span_80_octaves(x.astype(np.float64)) > 1.0
    assert not np.array_equal(load_clip(speech[0])[0], load_clip(speech[1])[0])
    assert P.DefaultCorpus(speech=True).speech


@needs_espeak
def test_speech_can_be_left_out():
    refs = P.DefaultCorpus(n_clips=50, speech=False).list_clips()
    assert "speech" not in {r.category for r in refs}


def test_missing_espeak(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda *args, **kwargs: None)
    with pytest.raises(RuntimeError, match="espeak-ng is not installed"):
        P.DefaultCorpus(speech=True)
    refs = P.DefaultCorpus(n_clips=40).list_clips()  # auto-detect: no speech
    assert "speech" not in {r.category for r in refs}
    ref = ClipRef("default/speech-00010", "default", '{"kind":"speech","index":10,"seed":0}', "speech")
    with pytest.raises(ClipError, match="espeak-ng is not installed"):
        load_clip(ref)


def test_a_corpus_without_espeak_ng_says_so_and_records_why(monkeypatch):
    from bast.datasets import speech
    from bast.datasets.procedural import DefaultCorpus
    from bast.datasets.sources import resolve_source

    monkeypatch.setattr(speech, "available", lambda: False)
    corpus = DefaultCorpus(n_clips=30, seed=0)
    assert "speech" not in corpus.kinds and "espeak-ng is not installed" in corpus.manifest_info()["missing_kinds"]["speech"]
    assert {r.category for r in corpus.list_clips()} == set(corpus.kinds)  # the others fill the 30
    found = resolve_source("default", sounds=30)
    assert found.info["missing_kinds"] == {"speech": speech.MISSING} and found.info["kinds"] == corpus.kinds
    assert any("no speech clips" in n and "espeak-ng" in n for n in found.notes)
    monkeypatch.setattr(speech, "available", lambda: True)
    whole = DefaultCorpus(n_clips=30, seed=0)
    assert "speech" in whole.kinds and whole.manifest_info()["missing_kinds"] == {} and whole.note() is None
    assert DefaultCorpus(n_clips=30, seed=0, speech=False).manifest_info()["missing_kinds"] == {
        "speech": "left out (speech=False)"}


def test_categories_keep_the_named_ones_and_refuse_unknown_names(tmp_path):
    from bast.datasets.sources import resolve_source
    from bast.errors import ConfigError

    found = resolve_source("default", sounds=12, seed=1, speech=False, categories="clicks, harmonic")
    assert len(found.refs) == 12 and {r.category for r in found.refs} == {"clicks", "harmonic"}
    assert found.info["categories"] == ["clicks", "harmonic"]
    everything = resolve_source("default", sounds=12, seed=1, speech=False)
    assert len({r.category for r in everything.refs}) > 2 and "categories" not in everything.info
    for name in ("a", "b"):  # a folder corpus: the category is the first folder
        (tmp_path / name).mkdir()
        sf.write(tmp_path / name / "x.wav", np.zeros(1600), 16000)
    assert [r.category for r in resolve_source(str(tmp_path), categories="b").refs] == ["b"]
    with pytest.raises(ConfigError, match="nope not among the categories.*a, b"):
        resolve_source(str(tmp_path), categories="b,nope")
    with pytest.raises(ConfigError, match="at least one"):
        resolve_source(str(tmp_path), categories=" , ")
