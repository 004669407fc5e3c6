"""The options of the conversion methods, declared once and checked in one place before any layer is converted.

Each processor class declares ``option_specs``: for every keyword its ``__init__`` takes beyond (dim, heads), an
:class:`Option` giving the kind of value and its range. :func:`check_options` checks a call's options against a
method's declarations, so that ``linearize(..., eps=-1.0)`` or ``feature_map="softplusx"`` is refused at conversion,
naming the method, the option, the value and what is allowed, instead of failing (or making NaNs) in the first call.

Kinds: ``"int"`` (an integer, not a bool, not 2.5), ``"float"`` (a finite real number, not a bool), ``"bool"`` (True
or False only), ``"choice"`` (one of ``choices``), ``"int_or_names"`` (an integer, or a list of strings).
"""

import math
import numbers
from dataclasses import dataclass

from ..errors import InvalidArgumentError


@dataclass(frozen=True)
class Option:
    """One option's kind and range; ``text`` is the allowed range in words, as the error message states it."""

    kind: str
    text: str
    minimum: float | None = None  # inclusive, unless ``above``
    above: bool = False  # True: value > minimum
    odd: bool = False
    also: tuple = ()  # values allowed outside the range (e.g. pool=0: off)
    choices: tuple = ()
    optional: bool = False  # None allowed (the processor's default)

    def accepts(self, value) -> bool:
        if value is None:
            return self.optional
        if value in self.also and type(value) is not bool:
            return True
        if self.kind == "bool":
            return isinstance(value, bool)
        if self.kind == "choice":
            return isinstance(value, str) and value in self.choices
        if self.kind == "int_or_names":
            if isinstance(value, (list, tuple)):
                return all(isinstance(name, str) for name in value)
            return self._number_in_range(value, integer=True)
        if self.kind in ("int", "float"):
            return self._number_in_range(value, integer=self.kind == "int")
        raise TypeError(f"unknown option kind {self.kind!r}")

    def plain(self, value):
        """An accepted value as a Python int / float (numpy scalars included), so that processors see those."""
        if isinstance(value, bool) or value is None or value in self.also:
            return value
        if self.kind == "int" or (self.kind == "int_or_names" and isinstance(value, numbers.Integral)):
            return int(value)
        return float(value) if self.kind == "float" else value

    def _number_in_range(self, value, *, integer: bool) -> bool:
        kinds = numbers.Integral if integer else numbers.Real
        if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value):
            return False
        if self.minimum is not None and (value <= self.minimum if self.above else value < self.minimum):
            return False
        return not (self.odd and value % 2 == 0)


def integer(minimum: int, text: str | None = None, **kwargs) -> Option:
    return Option("int", text or f"an integer >= {minimum}", minimum=minimum, **kwargs)


def odd_integer(minimum: int = 1) -> Option:
    return Option("int", f"an odd integer >= {minimum}", minimum=minimum, odd=True)


def positive_float() -> Option:
    return Option("float", "a finite number > 0", minimum=0, above=True)


def flag() -> Option:
    return Option("bool", "True or False")


def choice(*names: str) -> Option:
    return Option("choice", f"one of {', '.join(map(repr, names))}", choices=names)


def check_options(method: str, specs: dict[str, Option], options: dict, *, base: str | None = None) -> dict:
    """``options`` with plain Python numbers; InvalidArgumentError on the first option that ``specs`` does not
    declare or does not accept (``base``: hybrid's base method, named in the message)."""
    unknown = sorted(set(options) - set(specs))
    if unknown:
        raise InvalidArgumentError(f"method {method!r} takes the options {', '.join(specs) or 'none'}; "
                                   f"got {', '.join(unknown)}")
    for name, value in options.items():
        if not specs[name].accepts(value):
            call = f"method={method!r}" + (f", base={base!r}" if base else "")
            raise InvalidArgumentError(f"linearize({call}): {name} must be {specs[name].text}; got {value!r}")
    return {name: specs[name].plain(value) for name, value in options.items()}
