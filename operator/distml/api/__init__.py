"""The distml.io API: pydantic models (the one source of truth) and the CRDs generated from them."""
