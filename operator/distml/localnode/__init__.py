"""Process nodes: simulated GPU servers whose pods run as real processes, each node in its own
network namespace (`python -m distml.localnode`)."""
