"""hpcrun: one tool for submitting, syncing, monitoring and fetching PyTorch training jobs."""

__version__ = "0.1.0"
# hpcrun.probe tells this package from a foreign one named hpcrun by this line
HPCRUN_PRODUCT = "hpcrun: PyTorch training jobs on clusters, pods and this machine"
