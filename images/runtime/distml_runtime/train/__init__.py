"""Training programs: data-parallel (ddp), and pipeline/hybrid parallel."""
