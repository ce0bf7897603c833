"""One policy per module, each a pure function with its own tests."""
