"""Helpers shared by DIGITS extensions: ``subclass``/``override`` markers, constants, images.

``digits.utils.image`` needs Pillow, so it is not imported here; use
``from digits.utils import image`` where it is needed, as DIGITS plugins do.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T", bound=type)
F = TypeVar("F", bound=Callable[..., Any])

__all__ = ["override", "subclass"]


def override(method: F) -> F:
    """Mark a method as overriding one of its base class (checked by ``@subclass``)."""
    method.override = True  # type: ignore[attr-defined]
    return method


def subclass(cls: T) -> T:
    """Check that every ``@override`` method of ``cls`` exists in a base; inherit its docstring."""
    for name, attr in list(vars(cls).items()):
        func = getattr(attr, "__func__", attr)  # staticmethod/classmethod wrap the marked function
        if not getattr(func, "override", False):
            continue
        for base in inspect.getmro(cls)[1:]:
            if name in vars(base):
                if not func.__doc__:
                    base_attr = vars(base)[name]
                    func.__doc__ = getattr(base_attr, "__func__", base_attr).__doc__
                break
        else:
            raise TypeError(f"{cls.__name__}.{name} is marked @override but no base class has it")
    return cls
