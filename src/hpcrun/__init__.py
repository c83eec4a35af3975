"""hpcrun: one tool for submitting, syncing, monitoring and fetching PyTorch training jobs."""

__version__ = "0.1.0"
