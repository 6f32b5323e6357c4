"""Analysis and figures behind `bast-cli report`.

- `bast.report.stats`: predictions table I/O, errors per azimuth / category / room,
  hemifield pairing, paired t-test, Benjamini-Hochberg, front-back confusions.
- `bast.report.rollout`: attention rollout of the three encoders, folded onto the
  spectrogram (imports torch).
- `bast.report.figures`: matplotlib figures, one PNG each (imports matplotlib).
- `bast.report.paper`: the paper's Table 1 and Table 3 numbers.

Only the light modules (stats, paper) are imported here; import `rollout` and `figures`
explicitly.
"""

from bast.report.paper import PAPER_TABLE1, PAPER_TABLE3, paper_table1, paper_table3
from bast.report.stats import (
    benjamini_hochberg,
    by_category,
    by_env,
    error_histogram,
    front_back_confusion_rate,
    hemifield_pairs,
    hemifield_tests,
    load_predictions,
    make_predictions,
    paired_t_test,
    per_azimuth,
    per_azimuth_by_env,
    save_predictions,
    summary,
)

__all__ = [
    "PAPER_TABLE1", "PAPER_TABLE3", "paper_table1", "paper_table3",
    "benjamini_hochberg", "by_category", "by_env", "error_histogram", "front_back_confusion_rate",
    "hemifield_pairs", "hemifield_tests", "load_predictions", "make_predictions", "paired_t_test",
    "per_azimuth", "per_azimuth_by_env", "save_predictions", "summary",
]
