"""`bast-cli report` end to end on real (small) runs."""

import json
import re

from typer.testing import CliRunner

from bast.cli import app
from bast.model.train import preset, train

SMALL = dict(dim=32, heads=4, mlp_dim=64, depth=2, stride=12, dropout=0.0, batch_size=16, warmup_steps=5,
             device="cpu", epochs=1, max_minutes=None)


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
