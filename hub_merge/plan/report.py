"""A plan's findings: each :class:`Issue`, and the :class:`MergePlan` that lists, prints or raises them."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..errors import ConfigError, IncompatibleModelsError
from .meta import ModelMeta

# The issue a recipe's method or parameters raise (checks.method_issues).
METHOD_ISSUE = "method input contract"


@dataclass(frozen=True)
class Issue:
    """One incompatibility; ``blocking`` ones stop ``merge`` and ``search``."""

    model: str
    what: str
    detail: str
    blocking: bool = True

    def __str__(self) -> str:
        return f"{self.model}: {self.what}: {self.detail}"


@dataclass
class MergePlan:
    method: str | None
    base: ModelMeta | None
    models: list[ModelMeta]
    issues: list[Issue]
    estimates: dict[str, float]

    @property
    def ok(self) -> bool:
        return not any(i.blocking for i in self.issues)

    def raise_for_issues(self) -> None:
        """Raise :class:`IncompatibleModelsError` listing every blocking issue, or return."""
        blocking = [i for i in self.issues if i.blocking]
        if blocking and all(i.what == METHOD_ISSUE for i in blocking):
            # the recipe's parameters, not the models: merge's own one-line ConfigError
            raise ConfigError("; ".join(dict.fromkeys(i.detail for i in blocking)))
        if blocking:
            raise IncompatibleModelsError(
                f"The merge cannot work ({len(blocking)} problem(s), found before any weight "
                "was downloaded); drop or replace these models:"
                + IncompatibleModelsError.listing(blocking)
            )

    def to_json(self) -> dict[str, Any]:
        def meta(m: ModelMeta) -> dict[str, Any]:
            return {
                "ref": m.ref,
                "id": m.id,
                "kind": m.kind,
                "revision": m.revision,
                "layers": m.layers,
                "tensors": len(m.tensors),
                "weight_bytes": m.weight_bytes,
                "download_bytes": m.download_bytes,
                "license": m.license,
                "problem": m.problem,
            }

        return {
            "ok": self.ok,
            "method": self.method,
            "base": meta(self.base) if self.base else None,
            "models": [meta(m) for m in self.models],
            "issues": [asdict(i) for i in self.issues],
            "estimates": self.estimates,
        }

    def summary(self) -> str:
        e = self.estimates
        lines = [
            f"plan: {self.method or 'merge'} of {len(self.models)} model(s)"
            + (f" on {self.base.id}" if self.base else ""),
            f"  download {_gb(e['download_bytes'])}, disk {_gb(e['disk_bytes'])}, peak RAM "
            f"{_gb(e['peak_ram_bytes'])}, peak VRAM (--device cuda) {_gb(e['peak_vram_bytes'])}, "
            f"time ~{e['seconds']:.0f} s (rough)",
        ]
        for i in self.issues:
            lines.append(f"  {'ERROR' if i.blocking else 'note '} {i}")
        lines.append("  OK: no incompatibility found" if self.ok else "  the merge would fail")
        return "\n".join(lines)


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"
