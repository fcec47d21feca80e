"""The examples run and do what they say."""

import importlib.util
import pathlib

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_functional_learns(capsys):
    example = load("train_functional")
    first = example.main(steps=0)
    last = example.main(steps=150)
    # The untrained read-out is off by ~0.26 (mean square); trained it is below 0.02. A
    # wrong gradient anywhere in the chain leaves it near the start.
    assert last < first / 5, (first, last)
    assert "loss" in capsys.readouterr().out
