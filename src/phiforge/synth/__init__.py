"""The synthetic data engine: seeds, teacher workflows, verification, provenance (the report's section 2)."""
