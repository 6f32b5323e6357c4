"""`bast-cli report` end to end on real (small) runs."""

import json
import re

import numpy as np
import pytest
from typer.testing import CliRunner

from bast.cli import app
from bast.model.train import preset, train
from bast.report.build import build_report

SMALL = dict(dim=32, heads=4, mlp_dim=64, depth=2, stride=12, dropout=0.0, batch_size=16, warmup_steps=5,
             device="cpu", epochs=1, max_minutes=None)


@pytest.mark.slow
def test_report_from_three_runs(small_features, tmp_path):
    runs = {
        "nsp-sub": preset("tiny", integration="sub", **SMALL),
        "sp-add": preset("tiny", integration="add", shared=True, loss="mse", **SMALL),
        "nsp-sub-anechoic": preset("tiny", integration="sub", train_env="anechoic", **SMALL),
    }
    for name, cfg in runs.items():
        train(small_features, tmp_path / name, cfg)
    (tmp_path / "sp-add" / "eval" / "test_predictions.csv").unlink()  # the report evaluates it again
    out = tmp_path / "report"
    result = CliRunner().invoke(app, ["report", *(str(tmp_path / n) for n in runs), "--out", str(out)])
    assert result.exit_code == 0, result.output
    page = (out / "index.html").read_text()
    for heading in ("Table 1", "per azimuth", "hemifield", "Table 3", "Attention rollout"):
        assert heading in page, heading
    images = re.findall(r'src="data:image/png;base64,', page)
    pngs = list((out / "figures").glob("*.png"))
    assert len(images) == len(pngs) >= 1 + 2 + 3 * 4 + 2 * 2  # polar, hemifield x2, per run x4, rollouts
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["runs"]) == 3
    hemi = summary["hemifield"]["ad_deg"]
    assert all(0 <= v["p"] <= v["p_adj"] <= 1 for v in hemi.values())  # BH never lowers a p-value
    table1 = (out / "table1.csv").read_text().splitlines()
    assert table1[0].startswith("mode,loss,integration") and len(table1) == 3  # the anechoic run is in Table 3
    assert "SP,mse,add" in (out / "table1.csv").read_text()
    assert (out / "table3.csv").exists()


def test_conditions_are_broken_down_in_the_test_and_the_report(tmp_path):
    """Shards with rooms and a drawn SNR: the final test and the report break the error
    down per room and against SNR (binned when the SNR takes many values)."""
    from bast.datasets.procedural import DefaultCorpus
    from bast.model.targets.metrics import by_label
    from bast.pipeline.features.featurize import featurize
    from bast.pipeline.render.spatialize import SpatializeConfig, spatialize

    refs = DefaultCorpus(n_clips=16, seed=4, speech=False).list_clips()
    spatialize(refs, tmp_path / "s1", SpatializeConfig(azimuths=(0.0, 90.0, 180.0, 270.0), seed=4,
                                                      samples_per_shard=16, snr_db=(-10.0, 30.0)))
    featurize(tmp_path / "s1", tmp_path / "s2")
    cfg = preset("tiny", dim=32, heads=4, mlp_dim=64, stride=12, batch_size=16, warmup_steps=5, device="cpu",
                 epochs=1)
    test = train(tmp_path / "s2", tmp_path / "run", cfg)
    assert test["labels"] == ["head", "room", "snr_db"]
    assert set(test["by_room"]) == {"anechoic", "hall"}
    assert sum(v["n"] for v in test["by_room"].values()) == test["n"]
    snr = test["by_snr_db"]
    assert 2 <= len(snr) <= 8 and sum(v["n"] for v in snr.values()) == test["n"]  # drawn per sample: binned
    assert all(-10 <= float(k) <= 30 for k in snr)
    # A few values are kept as they are, +inf (no noise) apart.
    pred = {"ad_deg": np.array([1.0, 2.0, 3.0, 5.0]), "sq_err": np.zeros(4),
            "snr_db": np.array([0.0, 0.0, 10.0, np.inf])}
    assert {k: v["n"] for k, v in by_label(pred, "snr_db").items()} == {"0": 2, "10": 1, "inf": 1}
    # Binned (many values), older shards' NaN keep their own group under its full name.
    many = np.concatenate([np.linspace(0.0, 8.0, 40), [np.inf, np.nan]])
    groups = by_label({"ad_deg": np.ones(42), "sq_err": np.zeros(42), "snr_db": many}, "snr_db")
    assert groups["none"]["n"] == 1 and groups["inf"]["n"] == 1 and sum(v["n"] for v in groups.values()) == 42
    page, _ = build_report([tmp_path / "run"], tmp_path / "report", rollout_samples=0)
    html = page.read_text()
    assert (tmp_path / "report" / "figures" / "run_ad_by_snr.png").exists()
    assert "Per room: anechoic" in html


def test_report_device_is_resolved_like_training(small_features, tmp_path):
    """On a real run whose stored test predictions are gone (so the report evaluates it
    again, on the device it resolves): --device auto reports the run's own test figures;
    --device cuda reports on the GPU where there is one and is one clear error where there
    is none, writing no report."""
    import torch

    run = tmp_path / "run"
    final = train(small_features, run, preset("tiny", **SMALL))
    (run / "eval" / "test_predictions.csv").unlink()
    result = CliRunner().invoke(app, ["report", str(run), "--out", str(tmp_path / "auto"), "--device", "auto",
                                      "--rollout-samples", "0"])
    assert result.exit_code == 0, result.output
    (reported,) = json.loads((tmp_path / "auto" / "summary.json").read_text())["runs"].values()
    assert reported["summary"]["ad_deg"] == pytest.approx(final["ad_deg"], abs=0.5)
    (run / "eval" / "test_predictions.csv").unlink()
    result = CliRunner().invoke(app, ["report", str(run), "--out", str(tmp_path / "cuda"), "--device", "cuda",
                                      "--rollout-samples", "0"])
    if torch.cuda.is_available():
        assert result.exit_code == 0, result.output
        assert (tmp_path / "cuda" / "index.html").exists()
    else:
        assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
        assert "CUDA is not available" in result.output and not (tmp_path / "cuda" / "index.html").exists()
