"""The emulator room: machine-learned force-field ensembles that predict, relax and report their uncertainty."""

from emulator.base import (
    CommitteeMember,
    CommitteeMemberSettings,
    Emulator,
    EmulatorError,
    EmulatorSettings,
    EnsemblePrediction,
    LabelledStructure,
    RelaxResult,
    get_emulator_class,
    get_member_class,
    member_settings_models,
    settings_models,
)
from emulator.chgnet_ensemble import ChgnetEnsemble, ChgnetEnsembleSettings
from emulator.sevennet_member import SevenNetMember, SevenNetMemberSettings

__all__ = [
    "ChgnetEnsemble",
    "ChgnetEnsembleSettings",
    "CommitteeMember",
    "CommitteeMemberSettings",
    "Emulator",
    "EmulatorError",
    "EmulatorSettings",
    "EnsemblePrediction",
    "LabelledStructure",
    "RelaxResult",
    "SevenNetMember",
    "SevenNetMemberSettings",
    "get_emulator_class",
    "get_member_class",
    "member_settings_models",
    "settings_models",
]
