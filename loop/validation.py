"""Validation helpers shared by the config loader and `matloop label`; torch-free, as `matloop label` is."""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import BaseModel, Field, TypeAdapter, ValidationError

import oracle  # noqa: F401  (registers the implementations)
from loop.errors import InputError
from oracle.base import oracle_names, settings_models


def discriminated_union(models: tuple[type[BaseModel], ...]) -> Any:
    """A pydantic union of settings models told apart by their `kind` field."""
    if len(models) == 1:
        return models[0]
    return Annotated[Union[models], Field(discriminator="kind")]  # noqa: UP007  (a runtime tuple of models)


TAGGED_SECTIONS = ("oracle", "emulator")
# Containers that exist in the model but not in the YAML: `generator.settings.diffusion` is `generator.diffusion`.
HIDDEN_CONTAINERS = {("generator", "settings")}


def _union_tags(*, generators: bool) -> set[str]:
    # The emulator room imports torch and chgnet (~3 s), which `matloop label` avoids: only to word an error.
    from emulator.base import emulator_names

    tags = {*oracle_names(), *emulator_names()}
    if generators:
        # Only for a generator error: `generator` imports the diffusion model (torch), which `matloop label` avoids.
        from generator.base import generator_names

        tags.update(generator_names())
    return tags


def format_validation_error(exc: ValidationError, *, source: str, prefix: tuple[str, ...] = ()) -> str:
    """One line: the first error with its key path, and how many more there are.

    The tag pydantic inserts for a discriminated union (`oracle.gpaw.cutoff`) is dropped: users wrote
    `oracle.cutoff`.
    """
    errors = exc.errors()
    first = errors[0]
    parts = [*prefix, *first["loc"]]
    tags = _union_tags(generators=bool(parts) and parts[0] == "generator")
    # A union's tag follows its section (`oracle.gpaw`) or repeats a generator's name (`diffusion.diffusion`).
    parts = [
        p
        for i, p in enumerate(parts)
        if not (i and p in tags and (parts[i - 1] in TAGGED_SECTIONS or parts[i - 1] == p))
    ]
    parts = [p for i, p in enumerate(parts) if not (i and (parts[i - 1], p) in HIDDEN_CONTAINERS)]
    loc = ".".join(str(p) for p in parts if not str(p).startswith("function-"))
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key (check the spelling; configs/default.yaml lists the valid keys)"
    elif first["type"] != "missing" and "input" in first and not isinstance(first["input"], dict):
        msg = f"{msg} (got {first['input']!r})"
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{source}: {loc or '<top>'}: {msg}{more}"


def validate_oracle_settings(data: dict[str, Any], *, source: str = "config") -> Any:
    """Validate an `oracle:` section (a dict with `kind`) into that oracle's settings model.

    Raises:
        InputError: unknown kind, unknown key or wrong type, in one line with the key path.
    """
    kind = data.get("kind") if isinstance(data, dict) else None
    if kind not in oracle_names():
        raise InputError(
            f"{source}: oracle.kind: unknown oracle {kind!r}; choose one of: {', '.join(oracle_names())}"
        )
    try:
        return TypeAdapter(discriminated_union(settings_models())).validate_python(data)
    except ValidationError as exc:
        raise InputError(format_validation_error(exc, source=source, prefix=("oracle",))) from None
