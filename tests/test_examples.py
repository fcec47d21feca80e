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


def test_torch_drop_in_trains_like_torch():
    # fastlstm.torch.LSTM in place of torch.nn.LSTM in a plain PyTorch loop: the same initial
    # weights give the same first outputs (float32 rounding: ~3e-8 measured; 1e-5 bound), and 2
    # epochs on the same batches give held-out accuracies far above chance (0.1) and close to
    # torch's (equal over seeds 0-5, 0.79-0.87: rounding differences have not grown yet)
    import pytest
    pytest.importorskip("torch")
    result = load("torch_drop_in").main(["--quick", "--seed", "0", "--device", "cpu"])
    assert result["start_gap"] < 1e-5, result
    ours, theirs = result["fastlstm.torch.LSTM"]["accuracy"], result["torch.nn.LSTM"]["accuracy"]
    assert ours > 0.6 and abs(ours - theirs) < 0.05, result


def test_torch_drop_in_first_gradients_match_torch():
    # The accuracy check above cannot see a wrong gradient that still trains (no gradient for
    # the biases, or one off by a constant factor, which Adam normalizes away): the two nets'
    # gradients on the example's first batch, from the same weights, agree to float32 rounding
    import pytest
    torch = pytest.importorskip("torch")
    import fastlstm.torch as ftorch
    ex = load("torch_drop_in")
    x_train, y_train, _, _ = ex.load_data(0)
    torch.manual_seed(0)
    nets = [ex.make_net(torch, torch.nn.LSTM, 16), ex.make_net(torch, ftorch.LSTM, 16)]
    nets[1].load_state_dict(nets[0].state_dict())
    x, y = torch.from_numpy(x_train[:32]), torch.from_numpy(y_train[:32])
    grads = []
    for net in nets:
        torch.nn.functional.cross_entropy(net(x), y).backward()
        grads.append({k: p.grad for k, p in net.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for k, g in grads[0].items():
        assert grads[1][k] is not None, k
        assert torch.allclose(grads[1][k], g, rtol=1e-4, atol=1e-6 * g.abs().max().item()), k


def test_plot_path_is_checked_before_training(tmp_path, capsys):
    # --plot into a missing folder ended the script with FileNotFoundError after the whole
    # training run (85 s for char_text_generation's default); it is a usage error up front
    import pytest
    for name in ("adding_problem", "char_text_generation", "classify_digits", "forecast_sunspots",
                 "sentiment"):
        example = load(name)
        with pytest.raises(SystemExit) as e:
            example.parse_args(["--quick", "--plot", str(tmp_path / "missing" / "curves.png")])
        assert e.value.code == 2 and "--plot: cannot write" in capsys.readouterr().err, name
        assert example.parse_args(["--quick", "--plot", str(tmp_path / "curves.png")]).plot


def test_train_functional_help_does_not_train():
    # (--help used to run the whole training: the script took no arguments)
    import subprocess
    import sys
    out = subprocess.run([sys.executable, str(EXAMPLES / "train_functional.py"), "--help"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--steps" in out.stdout and "loss" not in out.stdout, out
    out = subprocess.run([sys.executable, str(EXAMPLES / "train_functional.py"), "--steps", "0"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "step    0  loss" in out.stdout, out


def test_counts_below_one_are_usage_errors(capsys):
    # --epochs 0 trained nothing and then ended in a KeyError (an empty history) once the data
    # had loaded; counts below 1 are now refused by the argument parser, naming the option
    import pytest
    for name in ("adding_problem", "char_text_generation", "classify_digits", "forecast_sunspots",
                 "sentiment"):
        example = load(name)
        for argv, message in ((["--epochs", "0"], "--epochs: expected a number >= 1, got 0"),
                              (["--batch-size", "-3"], "--batch-size: expected a number >= 1, got -3"),
                              (["--units", "0"], "--units: expected a number >= 1, got 0")):
            with pytest.raises(SystemExit) as e:
                example.parse_args(["--quick"] + argv)
            assert e.value.code == 2 and message in capsys.readouterr().err, (name, argv)
        assert example.parse_args(["--quick", "--epochs", "1"]).epochs == 1
