"""Frozen records built with keywords: what @dataclass(frozen=True) gives the config, without
importing dataclasses, which imports inspect (about 1.1 MiB of every nginx worker's embedded
runtime)."""


class Record:
    """Subclasses list their fields in __slots__ and optional defaults in DEFAULTS."""
    __slots__ = ()
    DEFAULTS = {}

    def __init__(self, **values):
        for name in self.__slots__:
            if name in values:
                value = values.pop(name)
            elif name in self.DEFAULTS:
                value = self.DEFAULTS[name]
            else:
                raise TypeError(f"{type(self).__name__}: {name} is required")
            object.__setattr__(self, name, value)
        if values:
            raise TypeError(f"{type(self).__name__}: unknown fields {sorted(values)}")

    def __setattr__(self, name, value):
        raise AttributeError(f"{type(self).__name__} is read-only")

    def _values(self):
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other):
        return type(self) is type(other) and self._values() == other._values()

    def __hash__(self):
        return hash(self._values())

    def __repr__(self):
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__name__}({fields})"
