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


def resolve(identifier, base, deserialize, what, valid_names):
    """Keras-style ``get``: None -> None, an instance of ``base`` as is, a name or config
    dict through ``deserialize``, a subclass of ``base`` instantiated with its defaults;
    anything else raises ValueError naming ``what`` and the valid names."""
    if identifier is None:
        return None
    if isinstance(identifier, base):
        return identifier
    if isinstance(identifier, (str, dict)):
        return deserialize(identifier)
    if isinstance(identifier, type) and issubclass(identifier, base):
        return identifier()
    raise ValueError(f"Could not interpret {what} identifier {identifier!r}: expected a name, a "
                     f"fastlstm.{what}s.{base.__name__} or a config dict. Valid names: "
                     f"{valid_names}")
