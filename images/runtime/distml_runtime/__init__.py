"""distml_runtime: the code that runs in distml's pods — launcher, collectives and their benchmark,
data/pipeline/hybrid-parallel training, and serving."""

__version__ = "0.1.0"
