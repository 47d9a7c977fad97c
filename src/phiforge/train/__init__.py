"""Training: the loop, its optimizer and schedule, and resumable checkpoints."""
