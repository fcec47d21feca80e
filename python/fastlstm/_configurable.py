"""Shared base for small objects described by their constructor arguments (initializers,
regularizers): ``get_config()`` returns those arguments, ``from_config`` rebuilds."""


class Configurable:
    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        try:
            return cls(**config)
        except TypeError as e:
            raise ValueError(f"Invalid config for {cls.__name__}: {config!r} ({e})") from None

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"
