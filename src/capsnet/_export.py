"""The NamedTuples our modules return, named for ``torch.export.save``, which writes an output's type by name."""

from __future__ import annotations

from typing import Any, TypeVar

import torch.utils._pytree as pytree

_NamedTuple = TypeVar("_NamedTuple", bound=type[Any])


def saved_by_name(cls: _NamedTuple) -> _NamedTuple:
    """Class decorator: give the NamedTuple ``cls`` the name ``capsnet.<its class name>`` in saved exported
    programs. A process that loads one imports capsnet first, so that the name finds the class again."""
    # torch (2.4 on) names a NamedTuple only through this private function; should a later torch drop it, saving
    # alone fails again, with torch's own message.
    register = getattr(pytree, "_register_namedtuple", None)
    if register is not None:
        register(cls, serialized_type_name=f"capsnet.{cls.__qualname__}")
    return cls
