"""The `files` recipe (folders, CSV manifests, every kind of bad input) and the clip
policy (length, loudest window, split, padding, resampling, down-mix, normalisation)."""

import csv

import numpy as np
import pytest
import soundfile as sf

from bast.datasets import RECIPES, ClipError, ClipRef, load_clip
from bast.datasets.files import FileCorpus
from bast.pipeline.render.clips import ClipPolicy, prepare

FS = 16000
RNG = np.random.default_rng(1234)


def noise(seconds: float, fs: int = FS, std: float = 0.1, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(scale=std, size=int(round(seconds * fs)))


def tone(freq: float, seconds: float, fs: int, amp: float = 0.5) -> np.ndarray:
    return amp * np.sin(2 * np.pi * freq * np.arange(int(round(seconds * fs))) / fs)


def rms_db(x) -> float:
    x = np.asarray(x, dtype=np.float64)
    return 20 * np.log10(np.sqrt(np.mean(x**2)))


def outcome(ref: ClipRef, policy: ClipPolicy = ClipPolicy()):
    """('ok', number of clips, warnings) or ('fail', reason) for one clip, as the pipeline
    would record it."""
    try:
        audio, fs = load_clip(ref)
        clips, warnings = prepare(audio, fs, policy)
    except ClipError as e:
        return ("fail", str(e))
    for c in clips:
        assert c.dtype == np.float32 and c.shape == (policy.samples,)
    return ("ok", len(clips), warnings)


@pytest.fixture
def mixed_folder(tmp_path):
    """Good clips of several formats and each kind of bad input, plus non-audio files."""
    root = tmp_path / "sounds"
    (root / "dog").mkdir(parents=True)
    (root / ".hidden").mkdir()
    sf.write(root / "good16k.wav", noise(0.5), FS)
    sf.write(root / "stereo44k.FLAC", np.stack([noise(1.2, 44100, seed=1), noise(1.2, 44100, seed=2)], 1),
             44100)
    sf.write(root / "short48k.ogg", tone(440, 0.3, 48000), 48000)
    sf.write(root / "dog" / "bark.wav", noise(0.7, seed=3), FS)
    sf.write(root / ".hidden" / "secret.wav", noise(0.5), FS)
    (root / ".DS_Store").write_bytes(b"\x00\x01")

    (root / "corrupt.wav").write_bytes(RNG.bytes(4000))
    full = tmp_path / "full.wav"
    sf.write(full, noise(1.0, seed=4), FS, subtype="PCM_16")
    data = full.read_bytes()
    assert data[36:40] == b"data"  # a plain 44-byte header
    (root / "truncated.wav").write_bytes(data[: 44 + 2 * 3200])  # 200 ms of a claimed 1 s
    (root / "header_only.wav").write_bytes(data[:44])  # claims 1 s, holds none
    (root / "empty.wav").write_bytes(b"")
    (root / "notes.mp3").write_text("this is not an mp3 file\n" * 40)
    nan = noise(0.5, seed=5)
    nan[100] = np.nan
    sf.write(root / "nan.wav", nan, FS, subtype="FLOAT")
    inf = noise(0.5, seed=6)
    inf[200] = np.inf
    sf.write(root / "inf.wav", inf, FS, subtype="FLOAT")
    sf.write(root / "silence.wav", np.zeros(8000), FS)
    sf.write(root / "dc.wav", np.full(8000, 0.5), FS)
    sf.write(root / "short30ms.wav", noise(0.03, seed=7), FS)
    (root / "README.txt").write_text("these are my sounds\n")
    (root / "dog" / "labels.json").write_text("{}")
    return root


def test_folder_listing(mixed_folder):
    corpus = FileCorpus(mixed_folder)
    refs = corpus.list_clips()
    ids = [r.clip_id for r in refs]
    assert ids == sorted(ids)
    assert set(ids) == {
        "good16k.wav", "stereo44k.FLAC", "short48k.ogg", "dog/bark.wav", "corrupt.wav",
        "truncated.wav", "header_only.wav", "empty.wav", "notes.mp3", "nan.wav", "inf.wav",
        "silence.wav", "dc.wav", "short30ms.wav",
    }
    by_id = {r.clip_id: r for r in refs}
    assert by_id["dog/bark.wav"].category == "dog"
    assert by_id["good16k.wav"].category == ""
    assert all(r.split is None and r.recipe == "files" for r in refs)
    assert by_id["good16k.wav"].locator == str((mixed_folder / "good16k.wav").resolve())
    assert sorted(corpus.ignored) == sorted(
        [str(mixed_folder / "README.txt"), str(mixed_folder / "dog" / "labels.json")])
    assert RECIPES["files"] is FileCorpus
    # deterministic
    assert FileCorpus(mixed_folder).list_clips() == refs


def test_every_input_gets_its_outcome(mixed_folder):
    results = {r.clip_id: outcome(r) for r in FileCorpus(mixed_folder).list_clips()}
    ok = {k: v for k, v in results.items() if v[0] == "ok"}
    fail = {k: v[1] for k, v in results.items() if v[0] == "fail"}
    # libsndfile reads a truncated WAV without error, returning the samples present: 200 ms
    # of the claimed 1 s, which the policy pads like any short clip.
    assert set(ok) == {"good16k.wav", "stereo44k.FLAC", "short48k.ogg", "dog/bark.wav",
                       "truncated.wav"}
    assert ok["good16k.wav"][2] == []
    assert "down-mixed 2 channels to mono" in ok["stereo44k.FLAC"][2]
    assert "resampled from 44100 Hz" in ok["stereo44k.FLAC"][2]
    assert "resampled from 48000 Hz" in ok["short48k.ogg"][2]
    assert any("zero-padded 300 ms" in w for w in ok["short48k.ogg"][2])
    assert any("zero-padded 200 ms" in w for w in ok["truncated.wav"][2])

    assert fail["corrupt.wav"].startswith("not an audio file or corrupt (libsndfile: ")
    assert fail["notes.mp3"].startswith("not an audio file or corrupt (libsndfile: ")
    assert fail["empty.wav"] == "empty file (0 bytes)"
    assert fail["header_only.wav"] == "no samples (0 frames)"
    assert fail["nan.wav"] == "contains NaN/Inf samples (1 NaN, 0 Inf)"
    assert fail["inf.wav"] == "contains NaN/Inf samples (0 NaN, 1 Inf)"
    assert fail["silence.wav"] == "digital silence (RMS -inf dBFS)"
    assert "constant signal (DC offset only" in fail["dc.wav"]
    assert fail["short30ms.wav"] == "too short: 30 ms < 100 ms minimum"
    assert len(fail) == 9


def test_load_raises_only_clip_errors(tmp_path):
    (tmp_path / "a.wav").mkdir()
    for locator, reason in [(tmp_path / "missing.wav", "file not found"),
                            (tmp_path / "a.wav", "not a regular file")]:
        with pytest.raises(ClipError) as e:
            FileCorpus.load(ClipRef("x", "files", str(locator)))
        assert str(e.value) == reason
    for k in range(5):  # random bytes of several sizes: never a raw soundfile exception
        p = tmp_path / f"r{k}.wav"
        p.write_bytes(np.random.default_rng(k).bytes(10 ** k))
        with pytest.raises(ClipError, match="not an audio file or corrupt"):
            FileCorpus.load(ClipRef(p.name, "files", str(p)))


def test_near_silence_reports_level(tmp_path):
    x = noise(0.5, std=10 ** (-100 / 20))  # -100 dBFS noise
    with pytest.raises(ClipError, match=r"^silent: RMS -10\d\.\d dBFS below -90 dBFS$"):
        prepare(x, FS, ClipPolicy())
    with pytest.raises(ClipError, match="constant signal"):  # DC plus inaudible noise
        prepare(x + 0.25, FS, ClipPolicy())
    clips, _ = prepare(x, FS, ClipPolicy(silence_dbfs=-120))  # a lower threshold accepts it
    assert rms_db(clips[0]) == pytest.approx(-20, abs=0.01)


def test_loudest_window_contains_the_burst():
    x = noise(2.0, std=0.01, seed=10)
    burst = slice(int(0.8 * FS), int(1.1 * FS))
    x[burst] += noise(0.3, std=0.5, seed=11)
    clips, warnings = prepare(x, FS, ClipPolicy(normalize="none"))
    assert len(clips) == 1
    clip = clips[0].astype(np.float64)
    # locate the window in the original signal
    cand = np.flatnonzero(np.float32(x[: x.size - 8000 + 1]) == clips[0][0])
    assert cand.size >= 1
    start = next(s for s in cand if np.array_equal(np.float32(x[s:s + 8000]), clips[0]))
    assert int(0.6 * FS) <= start <= int(0.8 * FS)  # the whole burst is inside
    assert np.sum(clip**2) >= np.sum(x[burst] ** 2) * 0.999
    assert any("loudest 500 ms window" in w for w in warnings)
    # a window that missed the burst would be far quieter
    assert rms_db(clip) > rms_db(x[:8000]) + 20


@pytest.mark.parametrize("min_ms, expected", [(100, 4), (250, 3)])
def test_split_counts_and_padding(min_ms, expected):
    x = noise(1.7, seed=20)  # 3 x 500 ms + 200 ms
    clips, warnings = prepare(x, FS, ClipPolicy(long="split", min_ms=min_ms, normalize="none"))
    assert len(clips) == expected
    for k in range(3):
        np.testing.assert_array_equal(clips[k], np.float32(x[k * 8000:(k + 1) * 8000]))
    if expected == 4:
        last = clips[3]
        np.testing.assert_array_equal(last[2400:5600], np.float32(x[24000:]))
        assert not np.any(last[:2400]) and not np.any(last[5600:])
        assert any("200 ms" in w and "zero-padded" in w for w in warnings)
    else:
        assert any("dropped a last piece of 200 ms" in w for w in warnings)


def test_split_drops_silent_segments():
    x = np.concatenate([noise(0.5, seed=21), np.zeros(8000), noise(0.5, seed=22)])
    clips, warnings = prepare(x, FS, ClipPolicy(long="split", normalize="none"))
    assert len(clips) == 2
    np.testing.assert_array_equal(clips[1], np.float32(x[16000:]))
    assert any("dropped 1 silent segment" in w and "positions 1" in w for w in warnings)
    # a file that is silent everywhere except a stretch too short to keep
    y = np.zeros(int(1.05 * FS))
    y[-800:] = noise(0.05, seed=23)  # 50 ms remainder: dropped as too short
    with pytest.raises(ClipError, match="all 2 segments are silent"):
        prepare(y, FS, ClipPolicy(long="split"))


def test_padding_is_centred():
    x = noise(0.3, seed=30)  # 4800 samples -> 1600 zeros each side
    clips, warnings = prepare(x, FS, ClipPolicy(normalize="none"))
    c = clips[0]
    np.testing.assert_array_equal(c[1600:6400], np.float32(x))
    assert not np.any(c[:1600]) and not np.any(c[6400:])
    assert warnings == ["zero-padded 300 ms to 500 ms (centred)"]
    # odd padding: the extra zero goes after the sound
    c = prepare(noise(0.3, seed=31)[:4799], FS, ClipPolicy(normalize="none"))[0][0]
    assert not np.any(c[:1600]) and c[1600] != 0 and c[6398] != 0 and not np.any(c[6399:])


@pytest.mark.parametrize("seconds", [0.3, 0.5, 1.3])
def test_rms_normalisation(seconds):
    clips, _ = prepare(noise(seconds, std=0.003, seed=40), FS, ClipPolicy())
    assert rms_db(clips[0]) == pytest.approx(-20.0, abs=0.01)
    clips, _ = prepare(noise(seconds, std=0.003, seed=40), FS, ClipPolicy(target_rms_dbfs=-30))
    assert rms_db(clips[0]) == pytest.approx(-30.0, abs=0.01)


def test_peak_and_no_normalisation():
    x = noise(0.5, std=0.02, seed=41)
    peak = prepare(x, FS, ClipPolicy(normalize="peak"))[0][0]
    assert np.max(np.abs(peak)) == pytest.approx(0.9, abs=1e-6)
    raw = prepare(x, FS, ClipPolicy(normalize="none"))[0][0]
    np.testing.assert_array_equal(raw, np.float32(x))


def test_resampling_keeps_frequency_and_amplitude():
    x = tone(1000, 1.2, 44100, amp=0.5)
    clips, warnings = prepare(x, 44100, ClipPolicy(normalize="none"))
    assert "resampled from 44100 Hz" in warnings
    c = clips[0].astype(np.float64)
    spectrum = np.abs(np.fft.rfft(c))
    freqs = np.fft.rfftfreq(c.size, 1 / FS)
    assert freqs[np.argmax(spectrum)] == pytest.approx(1000.0, abs=2.0)
    assert 2 * spectrum.max() / c.size == pytest.approx(0.5, rel=0.01)
    assert np.sqrt(np.mean(c**2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.01)
    # an odd rate: the approximated ratio is reported
    _, w = prepare(tone(1000, 0.6, 44057), 44057, ClipPolicy())
    assert any(s.startswith("resampled from 44057 Hz (ratio approximated as") for s in w)


def test_stereo_downmix_is_the_average():
    left, right = tone(500, 0.5, FS, 0.3), noise(0.5, seed=50)
    clips, warnings = prepare(np.stack([left, right], axis=1), FS, ClipPolicy(normalize="none"))
    np.testing.assert_allclose(clips[0], (left + right) / 2, atol=1e-7)
    assert warnings == ["down-mixed 2 channels to mono"]
    with pytest.raises(ClipError, match="digital silence .*after down-mix"):
        prepare(np.stack([left, -left], axis=1), FS, ClipPolicy())


def test_invalid_inputs_and_policy():
    for bad in (0, -16000, float("nan"), float("inf"), None):
        with pytest.raises(ClipError, match="invalid sample rate"):
            prepare(noise(0.5), bad, ClipPolicy())
    with pytest.raises(ClipError, match="no samples"):
        prepare(np.zeros(0), FS, ClipPolicy())
    with pytest.raises(ClipError, match="unexpected audio shape"):
        prepare(np.zeros((10, 2, 2)), FS, ClipPolicy())
    with pytest.raises(ClipError, match="too short: 99.9 ms < 100 ms minimum"):
        prepare(noise(0.5)[:1598], FS, ClipPolicy())
    clips, _ = prepare((noise(0.5) * 32767).astype(np.int16), FS, ClipPolicy(normalize="none"))
    assert np.max(np.abs(clips[0])) < 1.0
    for kwargs in ({"long": "first"}, {"normalize": "loud"}, {"min_ms": 600}, {"min_ms": -1},
                   {"fs": 0}, {"samples": 0}):
        with pytest.raises(ValueError):
            ClipPolicy(**kwargs)


def write_csv(path, header, rows):
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


def test_csv_manifest(tmp_path, monkeypatch):
    data = tmp_path / "data"
    (data / "audio").mkdir(parents=True)
    sf.write(data / "audio" / "1.wav", noise(0.5, seed=60), FS)
    sf.write(data / "audio" / "2.wav", noise(0.5, seed=61), FS)
    sf.write(data / "audio" / "3.wav", noise(0.5, seed=62), FS)
    manifest = data / "meta.csv"
    write_csv(manifest, ["Path", "category", "split", "fold"], [
        ["audio/1.wav", "bird", "train", "1"],
        ["audio/2.wav", "car", "TEST", "2"],
        ["audio/missing.wav", "dog", "", "3"],
        ["audio/3.wav", "", "", "4"],
        ["audio/1.wav", "bird", "train", "1"],  # duplicate row
    ])
    monkeypatch.chdir(tmp_path)  # relative paths resolve against the CSV, not the cwd
    corpus = FileCorpus(str(manifest))
    refs = {r.clip_id: r for r in corpus.list_clips()}
    assert list(refs) == ["audio/1.wav", "audio/2.wav", "audio/3.wav", "audio/missing.wav"]
    assert (refs["audio/1.wav"].category, refs["audio/1.wav"].split) == ("bird", "train")
    assert (refs["audio/2.wav"].category, refs["audio/2.wav"].split) == ("car", "test")
    assert (refs["audio/missing.wav"].category, refs["audio/missing.wav"].split) == ("dog", None)
    assert refs["audio/3.wav"].category == "audio"  # no category: the first-level folder
    assert len(corpus.warnings) == 1 and "duplicate" in corpus.warnings[0]
    audio, fs = load_clip(refs["audio/1.wav"])
    assert fs == FS and audio.shape == (8000,)
    with pytest.raises(ClipError, match="^file not found$"):
        load_clip(refs["audio/missing.wav"])


def test_csv_without_path_column(tmp_path):
    manifest = tmp_path / "meta.csv"
    write_csv(manifest, ["filename", "category"], [["a.wav", "dog"]])
    with pytest.raises(ValueError, match="no 'path' column.*'filename'"):
        FileCorpus(manifest)
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ValueError, match="needs a header row"):
        FileCorpus(tmp_path / "empty.csv")
    with pytest.raises(FileNotFoundError):
        FileCorpus(tmp_path / "nowhere")


def test_test_source(tmp_path):
    train = tmp_path / "train"
    (train / "cat").mkdir(parents=True)
    sf.write(train / "cat" / "a.wav", noise(0.5), FS)
    (train / "held_out").mkdir()
    sf.write(train / "held_out" / "b.wav", noise(0.5), FS)  # the test folder inside the source
    sf.write(train / "held_out" / "a.wav", noise(0.5), FS)
    refs = FileCorpus(train, test=train / "held_out").list_clips()
    assert [(r.clip_id, r.split) for r in refs] == [
        ("cat/a.wav", None), ("test/a.wav", "test"), ("test/b.wav", "test")]
    # a test CSV: its own split column is overridden
    manifest = tmp_path / "test.csv"
    write_csv(manifest, ["path", "split"], [["train/cat/a.wav", "train"]])
    refs = FileCorpus(train / "cat", test=manifest).list_clips()
    assert [(r.clip_id, r.split, r.category) for r in refs] == [("test/train/cat/a.wav", "test", "train")]
