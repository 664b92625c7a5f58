"""The runs `ablate` knows: paper Table 2's variants and this project's design variants, defined once.

Design notes: docs/design/experiments.md.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple


@dataclass(frozen=True)
class Variant:
    """One `ablate` variant: `name` (CLI name, run folder `mmin-<name>`), the MMIN config it sets,
    the label the tables show, and whether it is one of the paper's Table 2 rows."""

    name: str
    config: Dict = field(default_factory=dict)
    label: str = ""
    paper: bool = True

    @property
    def ablation(self) -> List[str]:
        return list(self.config.get("ablation", []))

    def spec(self) -> RunSpec:
        """The variant as a run of `ablate`: folder `mmin-<name>`, MMIN with the variant's config."""
        return RunSpec(name=f"mmin-{self.name}", model="mmin", label=self.label, config=dict(self.config))


#: paper Table 2 (config key `ablation`); run by default
PAPER_VARIANTS: Tuple[Variant, ...] = (
    Variant("full", {"ablation": []}, "MMIN (full)"),
    Variant("wo-cin", {"ablation": ["cin"]}, "w/o CIN"),
    Variant("wo-fin", {"ablation": ["fin"]}, "w/o FIN"),
    Variant("wo-text", {"ablation": ["text"]}, "w/o text"),
    Variant("wo-video", {"ablation": ["video"]}, "w/o video"),
    Variant("wo-audio", {"ablation": ["audio"]}, "w/o audio"),
    Variant("wo-sep", {"ablation": ["sep"]}, "w/o L_sep"),
    Variant("wo-ac", {"ablation": ["ac"]}, "w/o L_ac"),
    Variant("wo-ap", {"ablation": ["ap"]}, "w/o L_ap"),
)

#: this project's design choices (not the paper's); run only when named in `--variants`
DESIGN_VARIANTS: Tuple[Variant, ...] = (
    Variant("ca-ffn", {"ablation": [], "ca_ffn": True}, "design: CA with FFN", paper=False),
    Variant("ca-positions", {"ablation": [], "ca_positions": True}, "design: CA with positions", paper=False),
    Variant("sep-sum", {"ablation": [], "sep_reduction": "sum"}, "design: L_sep summed", paper=False),
)

VARIANTS: Dict[str, Variant] = {v.name: v for v in PAPER_VARIANTS + DESIGN_VARIANTS}

#: (name, ablation list, label) of Table 2, the form older code and tests read
ABLATION_VARIANTS = tuple((v.name, v.ablation, v.label) for v in PAPER_VARIANTS)


@dataclass(frozen=True)
class RunSpec:
    """One row of a comparison: `name` (row key / folder), the MMSA `model`, the `label` the tables
    show and its own `config` (wins over everything; an `ablate` variant's). A trial is a RunSpec on
    one dataset and seed (`runs.trial.Trial`)."""

    name: str
    model: str
    label: str
    config: Dict = field(default_factory=dict)

    @property
    def ablation(self) -> Optional[List[str]]:
        """MMIN's `ablation` list of a variant (None for a run that sets none)."""
        return list(self.config["ablation"]) if "ablation" in self.config else None
