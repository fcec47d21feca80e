"""Model files: one zip archive of plain data (JSON + .npy arrays), written atomically.

    model.save("model.keras")                  # any file name works
    model = fastlstm.models.load_model("model.keras")

Layout of the archive:

    fastlstm.json                 format marker, version, the model's config (architecture),
                                  its compile config and the list of stored arrays
    weights/00000.npy ...         the weights, in model.get_weights() order
    optimizer/<slot>/00000.npy    the optimizer's state slots (when include_optimizer)

Arrays are read with ``numpy.load(..., allow_pickle=False)`` and the architecture is
rebuilt only from fastlstm's own layer, loss, metric and optimizer classes named in the
JSON, so loading a file never runs code from it. A save first writes a temporary file
in the same folder, flushes it to disk and then renames it over the target, so a crash
mid-save leaves the previous file intact.

Devices: the file holds host (NumPy) copies of the weights and optimizer slots, whatever
device the model ran on. ``load_model`` builds the model on ``fastlstm.get_device()`` (a
model saved on a GPU loads on the CPU where there is none) and uploads the arrays there.
"""

import datetime
import io
import json
import os
import tempfile
import zipfile

import numpy as np

__all__ = ["save_model", "load_model", "save_weights", "load_weights", "FORMAT"]

FORMAT = "fastlstm.model"
VERSION = 1
_INDEX = "fastlstm.json"


class _NotOurs(ValueError):
    pass


def _npy_bytes(array):
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def _write_atomic(filepath, overwrite, write):
    filepath = os.fspath(filepath)
    if not overwrite and os.path.exists(filepath):
        raise FileExistsError(f"{filepath} exists and overwrite=False")
    folder = os.path.dirname(os.path.abspath(filepath))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"Cannot save to {filepath}: folder {folder} does not exist")
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(filepath) + ".", suffix=".tmp",
                               dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED) as zf:
                write(zf)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, filepath)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _index(model, kind, include_optimizer):
    from . import __version__, optimizers
    weights = model.get_weights()
    index = {
        "format": FORMAT,
        "version": VERSION,
        "kind": kind,
        "fastlstm_version": __version__,
        "saved_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "weights": [{"shape": list(w.shape), "dtype": str(w.dtype)} for w in weights],
    }
    if kind == "model":
        index["model_config"] = {"class_name": type(model).__name__,
                                 "config": model.get_config()}
        cc = model._compile_config
        if cc is not None and model.optimizer is not None:
            # the optimizer as it is now (a learning rate changed by a callback or by hand since
            # compile, as Keras saves it), not as it was compiled
            cc = dict(cc, optimizer=optimizers.serialize(model.optimizer))
        index["compile_config"] = cc
        index["optimizer_state"] = None
        if include_optimizer and model.optimizer is not None and model.optimizer.built:
            state = model.optimizer.get_state()
            index["optimizer_state"] = {
                "iterations": state.pop("iterations"),
                "slots": {name: len(arrays) for name, arrays in state.items()}}
    return index, weights


def _write(model, filepath, kind, overwrite, include_optimizer=False):
    if not model.built:
        raise ValueError("save: the model is not built yet, so it has no weights; build it "
                         "(give the first layer an input_shape, or call fit/predict) first")
    index, weights = _index(model, kind, include_optimizer)
    state = None
    if kind == "model" and index.get("optimizer_state") is not None:
        state = model.optimizer.get_state()
        state.pop("iterations")

    def write(zf):
        zf.writestr(_INDEX, json.dumps(index, indent=1, allow_nan=False))
        for i, w in enumerate(weights):
            zf.writestr(f"weights/{i:05d}.npy", _npy_bytes(w))
        if state is not None:
            for name, arrays in state.items():
                for i, a in enumerate(arrays):
                    zf.writestr(f"optimizer/{name}/{i:05d}.npy", _npy_bytes(a))

    _write_atomic(filepath, overwrite, write)


def save_model(model, filepath, overwrite=True, include_optimizer=True):
    """Write the architecture, weights, compile config and optimizer state to ``filepath``."""
    _write(model, filepath, "model", overwrite, include_optimizer)


def save_weights(model, filepath, overwrite=True):
    """Write only the weights (load them with ``model.load_weights``)."""
    _write(model, filepath, "weights", overwrite)


# --------------------------------------------------------------------------- reading

def _open(filepath):
    filepath = os.fspath(filepath)
    if not os.path.exists(filepath):
        raise FileNotFoundError(f"No such model file: {filepath}")
    try:
        zf = zipfile.ZipFile(filepath, "r")
    except zipfile.BadZipFile:
        raise ValueError(f"{filepath} is not a fastlstm model file (not a zip archive; it may "
                         "be corrupt or from another program)") from None
    try:
        names = set(zf.namelist())
        if _INDEX not in names:
            hint = ""
            if "config.json" in names and any(n.endswith(".h5") for n in names):
                hint = (" It looks like a Keras .keras file; load it in Keras and copy "
                        "get_weights() into a fastlstm model instead.")
            raise ValueError(f"{filepath} is not a fastlstm model file (no {_INDEX} inside)."
                             + hint)
        try:
            index = json.loads(zf.read(_INDEX).decode("utf-8"))
        except (ValueError, UnicodeDecodeError, zipfile.BadZipFile) as e:
            raise ValueError(f"{filepath}: corrupt fastlstm model file ({_INDEX} unreadable: "
                             f"{e})") from None
        if not isinstance(index, dict) or index.get("format") != FORMAT:
            raise ValueError(f"{filepath} is not a fastlstm model file (format marker missing)")
        if index.get("version") != VERSION:
            raise ValueError(f"{filepath}: fastlstm model format version {index.get('version')!r}"
                             f" is not supported by this fastlstm (reads version {VERSION})")
        return zf, index, names
    except BaseException:
        zf.close()
        raise


def _read_array(zf, name, filepath, shape=None, dtype=None):
    try:
        data = zf.read(name)
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except KeyError:
        raise ValueError(f"{filepath}: corrupt model file ({name} is missing)") from None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"{filepath}: corrupt model file ({name} unreadable: {e})") from None
    if shape is not None and (list(arr.shape) != list(shape) or str(arr.dtype) != dtype):
        raise ValueError(f"{filepath}: corrupt model file ({name} has shape {arr.shape} and "
                         f"dtype {arr.dtype}, the index says {tuple(shape)} {dtype})")
    return arr


def _read_weights(zf, index, filepath):
    specs = index.get("weights")
    if not isinstance(specs, list):
        raise ValueError(f"{filepath}: corrupt model file (no weight list)")
    return [_read_array(zf, f"weights/{i:05d}.npy", filepath, s.get("shape"), s.get("dtype"))
            for i, s in enumerate(specs)]


def load_model(filepath, compile=True):
    """Rebuild a Sequential model saved with ``model.save`` (architecture, weights, and,
    with ``compile=True``, its optimizer, loss, metrics and optimizer state)."""
    from . import losses, metrics, models, optimizers
    zf, index, names = _open(filepath)
    with zf:
        if index.get("kind") != "model":
            raise ValueError(f"{filepath} holds only weights (saved with save_weights); build "
                             "the model and call model.load_weights() instead")
        mc = index.get("model_config")
        if not isinstance(mc, dict) or mc.get("class_name") != "Sequential":
            raise ValueError(f"{filepath}: unsupported model class "
                             f"{mc.get('class_name') if isinstance(mc, dict) else None!r}")
        try:
            model = models.Sequential.from_config(mc.get("config"))
        except (TypeError, KeyError) as e:
            raise ValueError(f"{filepath}: could not rebuild the model: {e}") from None
        weights = _read_weights(zf, index, filepath)
        if not model.built:
            raise ValueError(f"{filepath}: the saved model has no input shape")
        try:
            model.set_weights(weights)
        except ValueError as e:
            raise ValueError(f"{filepath}: the weights do not fit the architecture: {e}") from None
        cc = index.get("compile_config")
        if compile and cc:
            model.compile(optimizer=optimizers.deserialize(cc["optimizer"]),
                          loss=None if cc.get("loss") is None else losses.deserialize(cc["loss"]),
                          metrics=[m if isinstance(m, str) else metrics.get(m)
                                   for m in cc.get("metrics", [])])
            st = index.get("optimizer_state")
            if st:
                state = {"iterations": int(st["iterations"])}
                for slot, count in st["slots"].items():
                    state[slot] = [_read_array(zf, f"optimizer/{slot}/{i:05d}.npy", filepath)
                                   for i in range(int(count))]
                model.optimizer.set_state(state)
    return model


def load_weights(model, filepath):
    """Copy the weights stored in ``filepath`` (a model or weights file) into ``model``."""
    zf, index, names = _open(filepath)
    with zf:
        weights = _read_weights(zf, index, filepath)
    if not model.built:
        raise ValueError("load_weights: build the model first (give the first layer an "
                         "input_shape or call build())")
    try:
        model.set_weights(weights)
    except ValueError as e:
        raise ValueError(f"{filepath}: the weights do not fit the model: {e}") from None
