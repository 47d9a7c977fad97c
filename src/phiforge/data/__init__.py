"""Data: corpus sources, programmatic synthetic data, tokenised and packed training rows."""
