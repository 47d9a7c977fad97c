"""Post-training: SFT in ChatML (DPO and Pivotal Token Search build on it)."""
