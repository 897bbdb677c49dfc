"""Crystal diffusion generator (issue 5): three noise processes, a CSPNet-style denoiser, PC sampling."""

from generator.diffusion.conditions import parse_condition_string, parse_conditions, validate_conditions
from generator.diffusion.generator import (
    SHIPPED_CHECKPOINT,
    DiffusionGenerator,
    DiffusionSettings,
    iter_sample_batches,
    sample_structures,
)

__all__ = [
    "SHIPPED_CHECKPOINT",
    "DiffusionGenerator",
    "DiffusionSettings",
    "iter_sample_batches",
    "parse_condition_string",
    "parse_conditions",
    "sample_structures",
    "validate_conditions",
]
