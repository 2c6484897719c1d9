"""Model configurations stored in (and rebuilt from) the weights' JSON metadata.

Every family's architecture config is a frozen dataclass deriving :class:`ModelConfig`, so one
function turns the metadata back into the dataclass: each field present in the dict is coerced to
the type of the field's default (tuples element-wise), a field absent from the dict (weights saved
before the field existed) takes ``LEGACY_DEFAULTS`` or the dataclass default, and keys the
dataclass does not know are ignored.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, TypeVar

C = TypeVar("C", bound="ModelConfig")


def _coerce(value: Any, like: Any) -> Any:
    """``value`` as the type of the default ``like`` (bool before int: bool is an int)."""
    if isinstance(like, tuple):
        kind = type(like[0]) if like else None
        return tuple(kind(v) if kind is not None else v for v in value)
    for kind in (bool, int, float, str):
        if isinstance(like, kind):
            return kind(value)
    return value


class ModelConfig:
    """Mixin for a frozen dataclass of architecture hyper-parameters: ``to_dict`` / ``from_dict``.

    ``LEGACY_DEFAULTS`` names the value a field takes when a weights file predates it and that
    value differs from the dataclass default (e.g. the flow encoder's ``output_scale``).
    """

    LEGACY_DEFAULTS: ClassVar[dict[str, Any]] = {}

    @classmethod
    def from_dict(cls: type[C], d: dict[str, Any]) -> C:
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            default = f.default
            if f.name in d:
                kwargs[f.name] = _coerce(d[f.name], default)
            elif f.name in cls.LEGACY_DEFAULTS:
                kwargs[f.name] = cls.LEGACY_DEFAULTS[f.name]
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """The fields in declaration order, tuples as lists (JSON)."""
        return {
            f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
            for f in dataclasses.fields(self)  # type: ignore[arg-type]
        }
