"""The BAST model (Stage 3). Not built yet: see issue 5."""
