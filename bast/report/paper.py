"""The paper's numbers, as data, to set a run's results beside them.

Source: Kuang et al., "BAST: Binaural Audio Spectrogram Transformer for Binaural Sound
Localization" (/work/shared/papers/bast-paper.md), Table 1 (test AD in degrees and MSE per
model, loss and interaural integration) and Table 3 (BAST-NSP, subtraction, hybrid loss,
trained and tested per listening environment). Their data set, not ours: 4600 training and
400 test sounds x 36 azimuths x 2 rooms.

MSE is None where the paper prints a dash: it gives no MSE for models trained with the AD
loss ("the MSE metric has no meaning when BAST is trained by AD loss", section 4.3). The
paper's MSE may be nn.MSELoss, i.e. half of our squared distance (docs/conventions.md); we cannot tell from
the text, so compare MSE with care (AD is unambiguous).
"""

from __future__ import annotations

from bast.conventions import parse_environments

LOSSES = ("mse", "ad", "mix")
INTEGRATIONS = ("concat", "add", "sub")

# PAPER_TABLE1[(mode, loss, integration)] = (AD in degrees, MSE or None). Table 1.
PAPER_TABLE1: dict[tuple[str, str, str], tuple[float, float | None]] = {
    # BAST-NSP
    ("NSP", "mse", "concat"): (2.78, 0.003),
    ("NSP", "mse", "add"): (2.48, 0.002),
    ("NSP", "mse", "sub"): (2.42, 0.002),
    ("NSP", "ad", "concat"): (2.39, None),
    ("NSP", "ad", "add"): (1.30, None),
    ("NSP", "ad", "sub"): (1.63, None),
    ("NSP", "mix", "concat"): (2.76, 0.004),
    ("NSP", "mix", "add"): (1.83, 0.002),
    ("NSP", "mix", "sub"): (1.29, 0.001),  # the paper's best model
    # BAST-SP
    ("SP", "mse", "concat"): (2.02, 0.002),
    ("SP", "mse", "add"): (4.97, 0.018),
    ("SP", "mse", "sub"): (1.94, 0.002),
    ("SP", "ad", "concat"): (2.66, None),
    ("SP", "ad", "add"): (13.87, None),
    ("SP", "ad", "sub"): (1.43, None),  # the text (5.1) quotes MSE 0.002 here; the table has a dash
    ("SP", "mix", "concat"): (1.98, 0.003),
    ("SP", "mix", "add"): (5.72, 0.026),
    ("SP", "mix", "sub"): (2.03, 0.002),
}

# PAPER_TABLE3[(train_env, test_env)] = (AD in degrees, MSE). Table 3: BAST-NSP, SUB, hybrid
# loss. train_env "both" is the paper's AE+RV; anechoic = AE (RI01), hall = RV (RI02).
PAPER_TABLE3: dict[tuple[str, str], tuple[float, float]] = {
    ("anechoic", "anechoic"): (1.14, 0.001),
    ("anechoic", "hall"): (8.66, 0.027),
    ("hall", "anechoic"): (16.70, 0.078),
    ("hall", "hall"): (1.65, 0.002),
    ("both", "anechoic"): (1.10, 0.001),
    ("both", "hall"): (1.48, 0.001),
}

# Baselines of Table 1, for context: PAPER_BASELINES[(model, loss, integration)] =
# (AD, MSE or None); integration None for the single-stream models.
PAPER_BASELINES: dict[tuple[str, str, str | None], tuple[float, float | None]] = {
    ("CNN", "mse", None): (3.90, 0.010),
    ("CNN", "ad", None): (42.69, None),
    ("CNN", "mix", None): (3.09, 0.011),
    ("FAViT", "mse", None): (6.26, 0.022),
    ("FAViT", "ad", None): (17.37, None),
    ("FAViT", "mix", None): (3.73, 0.015),
    ("NI-CNN", "mse", "concat"): (4.80, 0.011),
    ("NI-CNN", "mse", "add"): (4.80, 0.013),
    ("NI-CNN", "mse", "sub"): (5.30, 0.014),
    ("NI-CNN", "ad", "concat"): (3.70, None),
    ("NI-CNN", "ad", "add"): (3.90, None),
    ("NI-CNN", "ad", "sub"): (5.20, None),
    ("NI-CNN*", "mse", "concat"): (8.92, 0.077),
    ("NI-CNN*", "mse", "add"): (3.51, 0.032),
    ("NI-CNN*", "mse", "sub"): (3.67, 0.038),
    ("NI-CNN*", "ad", "concat"): (7.85, None),
    ("NI-CNN*", "ad", "add"): (1.97, None),
    ("NI-CNN*", "ad", "sub"): (1.85, None),
    ("NI-CNN*", "mix", "concat"): (8.35, 0.074),
    ("NI-CNN*", "mix", "add"): (3.53, 0.033),
    ("NI-CNN*", "mix", "sub"): (3.19, 0.031),
}

# The BAST fork's BAST-Mamba figures (Heterochromi/BAST README; AD in degrees only, no MSE),
# FORK_MAMBA_TABLE1[(mode, loss, integration)], on the paper's data. The fork's exact
# configuration behind them is not published (its conf.py and train_BAST.py are commented
# out): docs/train.md says what is known.
FORK_MAMBA_TABLE1: dict[tuple[str, str, str], tuple[float, float | None]] = {
    ("NSP", "mse", "concat"): (1.61, None), ("NSP", "mse", "add"): (2.03, None), ("NSP", "mse", "sub"): (1.92, None),
    ("NSP", "ad", "concat"): (1.34, None), ("NSP", "ad", "add"): (1.45, None), ("NSP", "ad", "sub"): (1.31, None),
    ("NSP", "mix", "concat"): (1.48, None), ("NSP", "mix", "add"): (1.77, None), ("NSP", "mix", "sub"): (1.60, None),
    ("SP", "mse", "concat"): (1.35, None), ("SP", "mse", "add"): (8.68, None), ("SP", "mse", "sub"): (1.75, None),
    ("SP", "ad", "concat"): (1.10, None), ("SP", "ad", "add"): (21.98, None), ("SP", "ad", "sub"): (1.03, None),
    ("SP", "mix", "concat"): (1.11, None), ("SP", "mix", "add"): (10.42, None),
    ("SP", "mix", "sub"): (0.89, None),  # the fork's best model
}

# Published figures per backbone for Table 1 (the fork publishes none for its Swin).
TABLE1_BY_BACKBONE = {"vit": PAPER_TABLE1, "mamba": FORK_MAMBA_TABLE1, "swin": {}}

_LOSS_ALIASES = {"mse": "mse", "ad": "ad", "mix": "mix", "hybrid": "mix"}
_INTEGRATION_ALIASES = {"concat": "concat", "concatenation": "concat", "cat": "concat",
                        "add": "add", "addition": "add", "sum": "add",
                        "sub": "sub", "subtraction": "sub", "diff": "sub"}


def paper_table1(mode: str, loss: str, integration: str) -> tuple[float, float | None]:
    """(AD deg, MSE or None) of Table 1, names case-insensitive with aliases
    (BAST-NSP, hybrid, addition, ...). KeyError for a combination the paper lacks."""
    m = mode.upper().removeprefix("BAST-")
    key = (m, _LOSS_ALIASES[loss.lower()], _INTEGRATION_ALIASES[integration.lower()])
    return PAPER_TABLE1[key]


def paper_table3(train_env: str, test_env: str) -> tuple[float, float]:
    """(AD deg, MSE) of Table 3 (NSP, SUB, hybrid); env names or AE/RV/RI01/RI02/RI/both."""
    return PAPER_TABLE3[(_table3_env(train_env), _table3_env(test_env))]


def _table3_env(name: str) -> str:
    """An environment name as Table 3 keys it: anechoic, hall, or both ('AE+RV' too)."""
    envs = parse_environments(name.replace("+", " "))
    return envs[0] if len(envs) == 1 else "both"
