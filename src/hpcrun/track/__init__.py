"""hpcrun.track: the run directory's diagnostics from any PyTorch training loop."""
