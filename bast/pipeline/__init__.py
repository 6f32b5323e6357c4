"""The data pipeline: impulse responses, rendering (Stage 1) and features (Stage 2)."""
