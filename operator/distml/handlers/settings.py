"""kopf settings distml needs at scale."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import kopf


class NoDiffBase(kopf.DiffBaseStorage):
    """distml reacts to raw watch events only; it has no on.create/on.update handlers, so kopf's
    per-event "essence" of each object (a deep copy, the largest CPU cost per pod and node event)
    is never compared with anything. This storage skips building it."""

    def build(
        self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None
    ) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None
