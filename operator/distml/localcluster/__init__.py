"""The embedded local GPU cluster: a real control plane run as local processes, with KWOK
simulating GPU nodes and their pods' lifecycles. Used by `make cluster`, the tests and the demo."""
