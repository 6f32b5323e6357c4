"""bast.report: statistics against scipy, hemifield pairing, front-back confusions,
attention rollout, folding onto the spectrogram, and that every figure draws."""

import math

import numpy as np
import pytest
import scipy.stats
import torch

from bast.model.targets import metrics as ev
from bast.report import figures, paper, rollout, stats

AZ = np.arange(0.0, 360.0, 10.0)
ENVS = ("anechoic", "hall")


def _table(n_clips=12, seed=0, left_extra=0.0, noise=0.5):
    """Synthetic predictions: every clip at every azimuth in both rooms. The prediction is
    the truth turned by an error whose size depends on the clip, plus `left_extra` degrees
    in the left hemifield."""
    rng = np.random.default_rng(seed)
    rows = {"clip_id": [], "category": [], "env": [], "azimuth_deg": [], "err": []}
    cats = ["noise", "speech", "click", ""]
    for c in range(n_clips):
        difficulty = rng.uniform(0.5, 6.0)
        for e in ENVS:
            for a in AZ:
                err = difficulty + (2.0 if e == "hall" else 0.0) + abs(rng.normal(0, noise))
                if 0 < a < 180:
                    err += left_extra
                rows["clip_id"].append(f"c{c:03d}")
                rows["category"].append(cats[c % len(cats)])
                rows["env"].append(e)
                rows["azimuth_deg"].append(a)
                rows["err"].append(err * rng.choice([-1, 1]))
    az = np.array(rows["azimuth_deg"])
    p = np.deg2rad(az + np.array(rows["err"]))
    scale = rng.uniform(0.8, 1.2, size=az.size)  # free output: not a unit vector
    return ev.make_predictions(az, scale * np.cos(p), scale * np.sin(p), clip_id=rows["clip_id"],
                                  category=rows["category"], env=rows["env"])


# ----------------------------------------------------------------------------- metrics, I/O
def test_make_predictions_metrics_follow_spec():
    pred = ev.make_predictions([0.0, 90.0, 180.0], [2.0, 1.0, 0.0], [0.0, 0.0, -1.0])
    np.testing.assert_allclose(pred["ad_deg"], [0.0, 90.0, 90.0], atol=1e-9)
    # |C - C^|^2 summed over x and y, not halved: (1-2)^2; (0-1)^2 + (1-0)^2; 1 + 1
    np.testing.assert_allclose(pred["sq_err"], [1.0, 2.0, 2.0], atol=1e-12)


def test_predictions_csv_roundtrip(tmp_path):
    pred = _table(n_clips=4)
    path = ev.save_predictions(pred, tmp_path / "eval" / "test_predictions.csv")
    assert path.read_text().splitlines()[0] == ",".join(ev.FIELDS)
    back = ev.load_predictions(path)
    assert set(back) == set(ev.FIELDS)
    for k in ev.STR_FIELDS:
        assert back[k].tolist() == pred[k].tolist()
    for k in ev.FLOAT_FIELDS:
        np.testing.assert_array_equal(back[k], pred[k])
    assert "" in back["category"].tolist()


def test_load_predictions_rejects_missing_columns_and_maps_aliases(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("clip_id,env,azimuth_deg\na,hall,10\n")
    with pytest.raises(ValueError, match="missing column"):
        ev.load_predictions(bad)
    ok = tmp_path / "ok.csv"
    ok.write_text(",".join(ev.FIELDS) + "\nx,,RI02,10,1,0,10,0.03\n")
    assert ev.load_predictions(ok)["env"].tolist() == ["hall"]


def test_per_azimuth_and_groups():
    pred = ev.make_predictions([10, 10, 350, 0], [np.cos(np.deg2rad(12)), np.cos(np.deg2rad(6)), 1, 1],
                                  [np.sin(np.deg2rad(12)), np.sin(np.deg2rad(6)), 0, 0],
                                  category=["a", "b", "a", ""], env=["anechoic", "hall", "hall", "RI01"])
    t = ev.per_azimuth(pred)
    np.testing.assert_allclose(t["azimuth_deg"], [0, 10, 350])
    np.testing.assert_allclose(t["ad_deg"], [0, 3, 10], atol=1e-9)
    assert t["n"].tolist() == [1, 2, 1]
    np.testing.assert_allclose(t["mse"][1], np.mean(pred["sq_err"][:2]))
    assert ev.per_azimuth(pred, env="hall")["azimuth_deg"].tolist() == [10, 350]
    assert sorted(ev.per_azimuth_by_env(pred)) == ["anechoic", "hall"]
    cat = ev.by_category(pred)
    assert sorted(cat) == ["a", "b"]  # the empty category is skipped
    assert cat["a"]["n"] == 2 and cat["a"]["ad_deg"] == pytest.approx(6.0)  # AD 2 and 10
    env = ev.by_env(pred)
    assert env["anechoic"]["n"] == 2 and env["hall"]["ad_deg"] == pytest.approx(7.0)  # AD 4 and 10
    counts, edges = ev.ad_histogram(pred, bins=[0, 1, 5, 20])
    assert counts.tolist() == [1, 2, 1] and len(edges) == 4
    s = ev.summary(pred)
    assert s["n"] == 4 and s["ad_deg"] == pytest.approx(4.0) and s["median_ad_deg"] == pytest.approx(3.0)
    assert set(s) >= {"by_env", "by_category", "front_back_rate", "mse"}


# ----------------------------------------------------------------------------- tests
def test_paired_t_test_equals_scipy():
    rng = np.random.default_rng(1)
    a = rng.normal(3.0, 1.0, 40)
    b = a - rng.normal(0.5, 1.0, 40)
    t, p = stats.paired_t_test(a, b)
    ref = scipy.stats.ttest_rel(a, b)
    assert t == pytest.approx(ref.statistic, rel=1e-12) and p == pytest.approx(ref.pvalue, rel=1e-12)
    assert t > 0
    assert all(math.isnan(v) for v in stats.paired_t_test([1.0], [2.0]))
    assert all(math.isnan(v) for v in stats.paired_t_test([1.0, np.nan], [2.0, 3.0]))
    with pytest.raises(ValueError):
        stats.paired_t_test([1, 2, 3], [1, 2])


def test_benjamini_hochberg_hand_computed():
    # sorted 0.001, 0.03, 0.031, 0.04, 0.9 -> p*m/rank = 0.005, 0.075, 0.0517, 0.05, 0.9;
    # the step-up minimum from the top makes rank 2 take 0.05 (monotonicity).
    p = [0.04, 0.9, 0.001, 0.031, 0.03]
    np.testing.assert_allclose(stats.benjamini_hochberg(p), [0.05, 0.9, 0.005, 0.05, 0.05])
    np.testing.assert_allclose(stats.benjamini_hochberg([0.01, 0.04, 0.03, 0.005]), [0.02, 0.04, 0.04, 0.02])
    out = stats.benjamini_hochberg([0.01, np.nan, 0.04])  # NaN kept, m counts finite only
    assert math.isnan(out[1])
    np.testing.assert_allclose(out[[0, 2]], [0.02, 0.04])
    assert np.isnan(stats.benjamini_hochberg([np.nan, np.nan])).all()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_benjamini_hochberg_equals_scipy(seed):
    rng = np.random.default_rng(seed)
    p = np.concatenate([rng.uniform(0, 1, 30), rng.uniform(0, 0.01, 10), [0.5, 0.5, 1.0, 0.0]])
    rng.shuffle(p)
    ours = stats.benjamini_hochberg(p)
    np.testing.assert_allclose(ours, scipy.stats.false_discovery_control(p, method="bh"), rtol=1e-12, atol=0)
    assert (ours <= 1).all() and (ours >= p - 1e-15).all()
    order = np.argsort(p)
    assert (np.diff(ours[order]) >= -1e-15).all()  # monotone in p


# ----------------------------------------------------------------------------- hemifields
@pytest.mark.parametrize("level", ["azimuth", "clip", "sound"])
def test_hemifield_left_larger_gives_positive_t(level):
    pred = _table(n_clips=12, left_extra=2.0)
    left, right, keys = stats.hemifield_pairs(pred, level=level)
    n = {"azimuth": 17, "clip": 12 * 2 * 17, "sound": 12}[level]
    assert left.size == right.size == keys.size == n
    t, p = stats.paired_t_test(left, right)
    assert t > 0 and p < 1e-3
    assert np.mean(left - right) == pytest.approx(2.0, abs=0.5)


def test_hemifield_symmetric_errors_give_no_difference_and_mse_metric():
    pred = _table(n_clips=12, left_extra=0.0, seed=3)
    left, right, _ = stats.hemifield_pairs(pred, metric="mse", level="sound")
    assert abs(np.mean(left - right)) < 0.1 * np.mean(left)
    _, p = stats.paired_t_test(left, right)
    assert p > 0.01


def test_hemifield_pairs_match_clip_room_and_mirror():
    # metric = a unique number per (clip, env, az); the right side is the left + 1
    clips, envs, azs, vals = [], [], [], []
    for c in range(3):
        for ei, e in enumerate(ENVS):
            for a in AZ:
                mirror = a if a < 180 else 360 - a
                clips.append(f"k{c}")
                envs.append(e)
                azs.append(a)
                vals.append(100 * c + 10 * ei + mirror / 10 + (1.0 if a > 180 else 0.0))
    rng = np.random.default_rng(0)
    order = rng.permutation(len(azs))  # row order must not matter
    pred = {"clip_id": np.array(clips)[order], "env": np.array(envs)[order], "azimuth_deg": np.array(azs)[order],
            "ad_deg": np.array(vals)[order], "sq_err": np.zeros(len(azs)), "category": np.full(len(azs), "")}
    left, right, keys = stats.hemifield_pairs(pred, level="clip")
    np.testing.assert_allclose(right - left, 1.0)
    assert sorted(set(keys.tolist())) == list(np.arange(10.0, 171.0, 10.0))
    left, right, keys = stats.hemifield_pairs(pred, level="sound")
    assert keys.tolist() == ["k0", "k1", "k2"]
    np.testing.assert_allclose(right - left, 1.0)
    left, right, keys = stats.hemifield_pairs(pred, level="azimuth")
    np.testing.assert_allclose(keys, np.arange(10.0, 171.0, 10.0))
    np.testing.assert_allclose(right - left, 1.0)
    # a clip missing its mirror in one room loses only that pair
    drop = ~((pred["clip_id"] == "k1") & (pred["env"] == "hall") & (pred["azimuth_deg"] == 330))
    left, _, keys = stats.hemifield_pairs(ev.select(pred, drop), level="clip")
    assert left.size == 3 * 2 * 17 - 1
    assert stats.hemifield_pairs(pred, level="clip", env="RI02")[0].size == 3 * 17


def test_hemifield_tests_adjusts_over_conditions():
    preds = {"asym": _table(8, left_extra=3.0, seed=4), "sym": _table(8, seed=5)}
    res = stats.hemifield_tests(preds)
    ps = [res[k]["p"] for k in preds]
    np.testing.assert_allclose([res[k]["p_adj"] for k in preds], stats.benjamini_hochberg(ps))
    assert res["asym"]["t"] > 0 and res["asym"]["p_adj"] < 0.05


# ----------------------------------------------------------------------------- front-back
def test_front_back_rate():
    az = np.repeat(AZ, 3)

    def vec(deg):
        return np.cos(np.deg2rad(deg)), np.sin(np.deg2rad(deg))

    assert ev.front_back_confusion_rate(ev.make_predictions(az, *vec(az))) == 0.0
    assert ev.front_back_confusion_rate(ev.make_predictions(az, *vec(180 - az))) == 1.0
    # half the samples reversed, half 5 deg off
    p = np.where(np.arange(az.size) % 2 == 0, 180 - az, az + 5)
    pred = ev.make_predictions(az, *vec(p))
    eligible = ~np.isin(az, [90, 270])
    assert ev.front_back_confusion_rate(pred) == pytest.approx(np.mean((np.arange(az.size) % 2 == 0)[eligible]))
    assert math.isnan(ev.front_back_confusion_rate(ev.make_predictions([90, 270], [0, 0], [1, -1])))
    # excluding near-lateral truths: only the far ones remain
    assert ev.front_back_confusion_rate(ev.make_predictions([80, 30], *vec(np.array([100, 150]))),
                                           exclude_within_deg=20) == 1.0


# ----------------------------------------------------------------------------- rollout
def _softmax_attn(layers, b=2, h=4, t=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.softmax(3 * torch.randn(b, h, t, t, generator=g), dim=-1) for _ in range(layers)]


def _assert_row_stochastic(m):
    assert (m >= 0).all()
    torch.testing.assert_close(m.sum(-1), torch.ones(m.shape[:-1], dtype=m.dtype), atol=1e-5, rtol=0)


@pytest.mark.parametrize("fusion", ["mean", "max", "min"])
@pytest.mark.parametrize("with_start", [False, True])
def test_rollout_row_stochastic(fusion, with_start):
    attn = _softmax_attn(3)
    start = torch.rand(2, 12, 12) * 5 if with_start else None
    out = rollout.rollout(attn, start=start, head_fusion=fusion)
    assert len(out) == 3
    for r in out:
        assert r.shape == (2, 12, 12)
        _assert_row_stochastic(r)


def test_rollout_formula_and_identity():
    attn = _softmax_attn(2, b=1, h=3, t=5, seed=1)
    out = rollout.rollout(attn)
    a = [(x.mean(1) + torch.eye(5)) / (x.mean(1) + torch.eye(5)).sum(-1, keepdim=True) for x in attn]
    torch.testing.assert_close(out[0], a[0])
    torch.testing.assert_close(out[1], a[1] @ a[0])
    eye_attn = [torch.eye(7).expand(2, 4, 7, 7).clone() for _ in range(3)]
    for r in rollout.rollout(eye_attn):
        torch.testing.assert_close(r, torch.eye(7).expand(2, 7, 7))
    bf16 = rollout.rollout([x.to(torch.bfloat16) for x in attn])  # autocast output
    assert bf16[-1].dtype == torch.float32
    _assert_row_stochastic(bf16[-1])


def test_bast_rollout_center_starts_from_normalised_sum():
    attn = {"left": _softmax_attn(3, seed=1), "right": _softmax_attn(3, seed=2), "center": _softmax_attn(2, seed=3)}
    out = rollout.bast_rollout(attn)
    assert [len(out[k]) for k in ("left", "right", "center")] == [3, 3, 2]
    for layers in out.values():
        for r in layers:
            _assert_row_stochastic(r)
    start = out["left"][-1] + out["right"][-1]
    start = start / start.sum(-1, keepdim=True)
    torch.testing.assert_close(out["center"], rollout.rollout(attn["center"], start=start))
    # identity attention in TE-C: its rollout is the start itself
    eye = {**attn, "center": [torch.eye(12).expand(2, 4, 12, 12).clone()]}
    torch.testing.assert_close(rollout.bast_rollout(eye)["center"][0], start)


def test_token_importance_and_grid():
    r = rollout.rollout(_softmax_attn(2, b=1, t=180))[-1][0]
    imp = rollout.token_importance(r)
    assert imp.shape == (180,) and imp.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(imp, r.double().mean(0).numpy())
    r181 = rollout.rollout(_softmax_attn(1, b=1, t=181))[-1][0]
    imp_cls = rollout.token_importance(r181, cls_token=True)
    assert imp_cls.shape == (180,) and imp_cls.sum() == pytest.approx(1.0)
    g = rollout.tokens_to_grid(np.arange(180), grid=(20, 9))
    assert g.shape == (20, 9) and g[3, 4] == 3 * 9 + 4
    assert rollout.tokens_to_grid(np.arange(181), grid=(20, 9), cls_token=True)[0, 0] == 1
    with pytest.raises(ValueError):
        rollout.tokens_to_grid(np.arange(100), grid=(20, 9))


@pytest.mark.parametrize("token", [0, 4, 8, 95, 171, 179])
def test_fold_single_hot_token_lights_its_patch(token):
    w = np.zeros(180)
    w[token] = 1.0
    m = rollout.fold_to_spectrogram(w)
    assert m.shape == (129, 61)
    r, c = divmod(token, 9)
    expect = np.zeros((129, 61), dtype=bool)
    # the model pads one row before row 0: patch row r covers padded rows 6r..6r+15, i.e.
    # spectrogram rows 6r-1..6r+14; slicing cuts the padded row and columns
    expect[max(0, 6 * r - 1):6 * r + 15, 6 * c:6 * c + 16] = True
    np.testing.assert_array_equal(m > 0, expect)
    assert m.max() <= 1.0


def test_fold_default_padding_is_the_models():
    # token importance folded with the defaults lands on the bins the model's patch saw:
    # feed the model's own patch embedding one bright bin and find the tokens that see it
    from bast.model.nets.bast import BASTConfig, PatchEmbed
    torch.manual_seed(0)
    embed = PatchEmbed(BASTConfig(dim=8, heads=1))
    for f, t in [(0, 0), (5, 7), (15, 20), (21, 33), (128, 60)]:
        x = torch.zeros(1, 1, 129, 61)
        x[0, 0, f, t] = 1.0
        with torch.no_grad():
            seen = (embed(x) - embed(torch.zeros_like(x))).abs().sum(-1)[0] > 0
        m = rollout.fold_to_spectrogram(seen.double().numpy())
        assert m[f, t] == pytest.approx(1.0)  # every patch covering (f, t) saw it
        assert m[f, t] > 0.99  # a pad row at the top frequency end fails at rows 15 and 21


def test_fold_conserves_weight_pattern():
    # the folded maps of all 180 single tokens add up to 1 in every bin (average, not sum)
    total = sum(rollout.fold_to_spectrogram(np.eye(180)[k]) for k in range(180))
    np.testing.assert_allclose(total, 1.0)
    np.testing.assert_allclose(rollout.fold_to_spectrogram(np.full(180, 0.3)), 0.3)
    batch = rollout.fold_to_spectrogram(np.stack([np.full(180, 1.0), np.full(180, 2.0)]))
    assert batch.shape == (2, 129, 61)
    grid = rollout.fold_to_spectrogram(np.arange(180.0).reshape(20, 9))
    np.testing.assert_allclose(grid, rollout.fold_to_spectrogram(np.arange(180.0)))
    # a weight on the bottom-left patch and one on the top-right patch stay apart
    w = np.zeros(180)
    w[0], w[179] = 1.0, 2.0
    m = rollout.fold_to_spectrogram(w)
    assert m[0, 0] == 1.0 and m[128, 60] == 2.0 and m[64, 30] == 0.0
    with pytest.raises(ValueError):
        rollout.fold_to_spectrogram(np.zeros(180), grid=(19, 9))


def test_rollout_maps_from_attention_dict():
    attn = {k: _softmax_attn(2, b=2, t=180, seed=i) for i, k in enumerate(("left", "right", "center"))}
    maps = rollout.rollout_maps(attn, sample=1)
    assert set(maps) == {"left", "right", "center"}
    for m in maps.values():
        assert m.shape == (129, 61) and (m >= 0).all()


# ----------------------------------------------------------------------------- paper
def test_paper_tables():
    assert paper.PAPER_TABLE1[("NSP", "mix", "sub")] == (1.29, 0.001)
    assert paper.PAPER_TABLE1[("SP", "ad", "add")] == (13.87, None)
    assert paper.PAPER_TABLE1[("NSP", "mse", "concat")] == (2.78, 0.003)
    assert len(paper.PAPER_TABLE1) == 18
    assert paper.paper_table1("BAST-NSP", "hybrid", "Subtraction") == (1.29, 0.001)
    assert paper.PAPER_TABLE3[("hall", "anechoic")] == (16.70, 0.078)
    assert paper.paper_table3("AE+RV", "RV") == (1.48, 0.001)


# ----------------------------------------------------------------------------- figures
def test_every_figure_writes_a_png(tmp_path):
    pred = _table(n_clips=8, left_extra=1.0)
    out = []
    per = {}
    for label, shift in (("CONCAT", 0.0), ("ADD", 1.0), ("SUB", -0.5)):
        t = ev.per_azimuth(pred)
        per[label] = (t["azimuth_deg"], t["ad_deg"] + shift)
    out.append(figures.polar_ad(per, tmp_path / "polar.png", "AD per azimuth"))
    res = stats.hemifield_tests({"NSP MSE": pred, "NSP AD": _table(8, seed=7), "SP MIX": _table(8, seed=8)})
    out.append(figures.hemifield_boxplots({k: (v["left"], v["right"], v["p_adj"]) for k, v in res.items()},
                                          "angular distance (°)", tmp_path / "hemi.png"))
    out.append(figures.scatter_pred_vs_true(pred, tmp_path / "scatter.png"))
    out.append(figures.error_histogram(pred, tmp_path / "hist.png"))
    out.append(figures.category_bars(ev.by_category(pred), tmp_path / "cats.png"))
    rows = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e, "val_ad_deg": 30 / e, "lr": 1e-4} for e in range(1, 11)]
    out.append(figures.training_curves(rows, tmp_path / "curves.png"))
    rng = np.random.default_rng(0)
    spec = rng.normal(-60, 10, (2, 129, 61))
    attn = {k: _softmax_attn(3, b=1, t=180, seed=i) for i, k in enumerate(("left", "right", "center"))}
    maps = rollout.rollout_maps(attn)
    out.append(figures.rollout_figure(spec, maps["left"], maps["right"], tmp_path / "maps.png", "rollout",
                                    center_map=maps["center"]))
    out.append(figures.rollout_figure(spec, maps["left"], maps["right"], tmp_path / "maps2.png", "rollout"))
    rolls = rollout.bast_rollout(attn)
    out.append(figures.rollout_layers({k: [r[0] for r in v] for k, v in rolls.items()}, (20, 9), tmp_path / "layers.png"))
    for path in out:
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", path
        assert len(data) > 10_000, (path, len(data))
