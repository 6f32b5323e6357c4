"""Stage 4: analysis, figures and the HTML page behind `bast-cli report`.

- `bast.report.stats`: hemifield pairing, paired t-test, Benjamini-Hochberg (the
  predictions table and its summaries are `bast.model.targets.metrics`).
- `bast.report.seld`: a SELD run's stored DCASE scores and CSVs, read back (torch-free).
- `bast.report.rollout`: attention rollout of the three encoders, folded onto the
  spectrogram (imports torch).
- `bast.report.figures`: matplotlib figures, one PNG each (imports matplotlib).
- `bast.report.paper`: the paper's Table 1 and Table 3 numbers.
- `bast.report.build`: the page itself.

Import the modules you need; this package imports nothing on its own.
"""
