"""The distillers, keyed by the names configs and the CLI use (eldistill.cell.DISTILLERS)."""

from __future__ import annotations

from eldistill.cell import DISTILLERS
from eldistill.distillers.base import Distiller, Phase, SampleNoise
from eldistill.distillers.cm import CM
from eldistill.distillers.di import DI
from eldistill.distillers.dmd import DMD
from eldistill.distillers.sid import SiD
from eldistill.distillers.sida import SiD2A, SiDA

REGISTRY: dict[str, type[Distiller]] = {cls.name: cls for cls in (DI, SiD, SiDA, SiD2A, DMD, CM)}
assert tuple(sorted(REGISTRY)) == tuple(sorted(DISTILLERS)), "every cell distiller needs a class"


def build_distiller(
    name: str,
    teacher,
    args=None,
    init_generator=None,
    augment_p: float = 0.0,
    lpips: str = "",
    lpips_resize: int | None = None,
) -> Distiller:
    if name not in REGISTRY:
        raise ValueError(f"distiller: unknown {name!r}; choose one of {', '.join(DISTILLERS)}")
    return REGISTRY[name](teacher, args, init_generator, augment_p, lpips, lpips_resize)


__all__ = ["REGISTRY", "Distiller", "Phase", "SampleNoise", "build_distiller"]
