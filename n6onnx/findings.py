"""What a pass or a detector reports per kind of subgraph: sites it matched, near-misses it
rejected (with the reason), how many it rewrote. Used by blocks, passes, the API and the CLI."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class Site:
    """One matched subgraph: where it is (the original node names) and what matched it."""

    nodes: list[str]
    rule: str = ""
    variant: str = ""
    detail: dict = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict:
        d = {"nodes": self.nodes, "rule": self.rule}
        if self.variant:
            d["variant"] = self.variant
        d.update(self.detail)
        return d


@dataclasses.dataclass
class Rejection:
    node: str
    reason: str

    def to_json(self) -> dict:
        return {"node": self.node, "reason": self.reason}


@dataclasses.dataclass
class KindReport:
    """What a pass (or a detector) saw, matched, rejected and rewrote for one kind of subgraph."""

    kind: str
    seen: int = 0
    sites: list[Site] = dataclasses.field(default_factory=list)
    near_misses: list[Rejection] = dataclasses.field(default_factory=list)
    rewritten: int = 0
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def found(self) -> int:
        return len(self.sites)

    def merged(self, other: "KindReport") -> "KindReport":
        """Two passes of one kind (on disjoint blocks) as one report of both."""
        return KindReport(self.kind, max(self.seen, other.seen), self.sites + other.sites,
                          self.near_misses + other.near_misses, self.rewritten + other.rewritten,
                          self.notes + other.notes)

    def to_json(self) -> dict:
        return {
            "found": self.found,
            "seen": self.seen,
            "sites": [s.to_json() for s in self.sites],
            "near_misses": [r.to_json() for r in self.near_misses],
            "rewritten": self.rewritten,
            "notes": self.notes,
        }
