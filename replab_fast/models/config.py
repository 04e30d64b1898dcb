"""Named presets for the models' dataclass configs."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar


class PresetConfig:
    """Mixin for a ``@dataclass`` config: ``Config.from_name("tiny", n_layers=4)``.

    A subclass sets ``PRESETS``, a dict from preset name to the field values that differ
    from the dataclass defaults. Derived fields belong in ``__post_init__``.
    """

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}

    @classmethod
    def from_name(cls, name: str, **overrides: Any):
        if name not in cls.PRESETS:
            known = ", ".join(cls.PRESETS)
            raise KeyError(f"{cls.__name__} has no preset {name!r}; presets: {known}")
        fields = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise TypeError(
                f"{cls.__name__} has no field(s) {', '.join(unknown)}; fields: {', '.join(sorted(fields))}"
            )
        return cls(**{**cls.PRESETS[name], **overrides})
