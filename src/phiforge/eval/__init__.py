"""Evaluation: a registry of tasks; each scores one model and says on how many samples."""
