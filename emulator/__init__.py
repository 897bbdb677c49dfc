"""The emulator room: machine-learned force-field ensembles that predict, relax and report their uncertainty."""

from emulator.base import (
    Emulator,
    EmulatorError,
    EmulatorSettings,
    EnsemblePrediction,
    LabelledStructure,
    RelaxResult,
    get_emulator_class,
    settings_models,
)
from emulator.chgnet_ensemble import ChgnetEnsemble, ChgnetEnsembleSettings

__all__ = [
    "ChgnetEnsemble",
    "ChgnetEnsembleSettings",
    "Emulator",
    "EmulatorError",
    "EmulatorSettings",
    "EnsemblePrediction",
    "LabelledStructure",
    "RelaxResult",
    "get_emulator_class",
    "settings_models",
]
