"""Model files: one zip archive of plain data (JSON + .npy arrays), written atomically.

    model.save("model.keras")                  # any file name works
    model = fastlstm.models.load_model("model.keras")

Layout of the archive:

    fastlstm.json                 format marker, version, the model's config (architecture),
                                  its compile config and the list of stored arrays
    weights/00000.npy ...         the weights, in model.get_weights() order
    optimizer/<slot>/00000.npy    the optimizer's state slots (when include_optimizer), one per
                                  trainable weight, or per weight listed by the index's
                                  optimizer_state "variables" (positions in get_weights())
                                  when a layer was frozen after training

Arrays are read with ``numpy.load(..., allow_pickle=False)`` and the architecture is
rebuilt only from fastlstm's own layer, loss, metric and optimizer classes named in the
JSON, so loading a file never runs code from it. Reading is bounded by the index and the
file: entries must be stored uncompressed (as fastlstm writes them), every entry's size and
every .npy header are checked against the shapes the index declares before anything is read,
and the architecture is first built with placeholders for its weights (nothing allocated, no
initializer run) and checked against those shapes before it is built for real, so a small
file cannot inflate into gigabytes; a damaged or hostile file raises ValueError naming it.

Files get the mode ``open()`` would give them: that of the file they replace, else 0666 less
the umask.

A save first writes a temporary file in the same folder, flushes it to disk and then renames
it over the target, so a crash mid-save leaves the previous file intact.

Not stored: a stateful LSTM's carried states (as Keras), a learning-rate schedule other than
``fastlstm.optimizers.schedules`` ones (a plain callable is saved as its current value, see
fastlstm.optimizers), and the random generators of layers given a
``seed`` (Dropout, LSTM dropout): a loaded model's seeded layers draw again from their seed,
so one more epoch of training with seeded dropout differs from the original model's. Unseeded
dropout draws from the package-wide generator (``fastlstm.utils.set_random_seed``), which
makes such a continuation repeatable.

Devices: the file holds host (NumPy) copies of the weights and optimizer slots, whatever
device the model ran on. ``load_model`` builds the model on ``fastlstm.get_device()`` (a
model saved on a GPU loads on the CPU where there is none) and uploads the arrays there.
"""

import datetime
import io
import json
import os
import tempfile
import warnings
import zipfile
import zlib

import numpy as np

__all__ = ["save_model", "load_model", "save_weights", "load_weights", "FORMAT"]

FORMAT = "fastlstm.model"
VERSION = 1
_INDEX = "fastlstm.json"
# Reading is bounded by what the index declares: fastlstm.json at most this many bytes, each
# array's entry at most its data plus this much .npy header (so a small file cannot inflate
# into gigabytes: every entry's uncompressed size is checked before it is read).
_MAX_INDEX_BYTES = 64 << 20
_MAX_NPY_HEADER = 1 << 16
_ARRAY_DTYPES = ("float32", "float64")


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
        # mkstemp makes the file owner-only (0600); give it the mode open() would: the mode
        # of the file it replaces, else 0666 less the umask (0644 under umask 022)
        try:
            mode = os.stat(filepath).st_mode & 0o7777
        except OSError:
            mode = 0o666 & ~_umask()
        os.chmod(tmp, mode)
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


def _umask():
    """The process's umask (read from /proc where it can be, else set and restored)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


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
        # (an optimizer restored from a state without slots, SGD without momentum, is not
        # built until it applies a step, but has its iterations)
        if include_optimizer and model.optimizer is not None and (
                model.optimizer.built or model.optimizer.iterations > 0):
            state = model.optimizer.get_state()
            index["optimizer_state"] = {
                "iterations": state.pop("iterations"),
                "slots": {name: len(arrays) for name, arrays in state.items()}}
            # the weights the slots belong to, by position in get_weights(), where they are not
            # the trainable weights (layers frozen after training: the optimizer still holds
            # the state of their weights, as Keras's does)
            bound = getattr(model.optimizer, "_variables", None)
            trainable = model.trainable_weights
            if bound is not None and not (len(bound) == len(trainable)
                                          and all(a is b for a, b in zip(bound, trainable))):
                position = {id(w): i for i, w in enumerate(model.weights)}
                if all(id(v) in position for v in bound):
                    index["optimizer_state"]["variables"] = [position[id(v)] for v in bound]
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

# What reading a damaged or hostile archive can raise besides ValueError (corrupt deflate
# data, unsupported compression or encryption, a deeply nested index, a missing or mistyped
# field): every one becomes a ValueError naming the file.
_BROKEN = (KeyError, TypeError, AttributeError, IndexError, OSError, EOFError, RuntimeError,
           NotImplementedError, RecursionError, MemoryError, OverflowError, zlib.error,
           zipfile.BadZipFile, UnicodeDecodeError)


def _broken(filepath, e):
    return ValueError(f"{filepath}: corrupt or unsupported fastlstm model file "
                      f"({type(e).__name__}: {e})")


def _entry_size(zf, name, filepath, limit):
    """The uncompressed size of entry `name`, refused above `limit` bytes, and refused when the
    entry is compressed (fastlstm writes every entry stored, so an entry's size is bytes the
    file really holds: a deflated one could inflate a thousandfold)."""
    try:
        info = zf.getinfo(name)
    except KeyError:
        raise ValueError(f"{filepath}: corrupt model file ({name} is missing)") from None
    if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size \
            or info.compress_size > os.path.getsize(filepath):
        raise ValueError(f"{filepath}: not a model file fastlstm wrote ({name} is compressed, or "
                         f"its sizes do not match the file: {info.compress_size} bytes stored, "
                         f"{info.file_size} uncompressed; fastlstm stores every entry uncompressed)")
    if info.file_size > limit:
        raise ValueError(f"{filepath}: corrupt model file ({name} would be {info.file_size} "
                         f"bytes uncompressed, more than the {limit} its index allows)")
    return info.file_size


def _open(filepath):
    filepath = os.fspath(filepath)
    if not os.path.exists(filepath):
        raise FileNotFoundError(f"No such model file: {filepath}")
    if os.path.isdir(filepath):
        raise ValueError(f"{filepath} is a folder, not a fastlstm model file")
    try:
        zf = zipfile.ZipFile(filepath, "r")
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError):
        # (NotImplementedError: a damaged central directory asking for a newer zip version)
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
        _entry_size(zf, _INDEX, filepath, _MAX_INDEX_BYTES)
        try:
            index = json.loads(zf.read(_INDEX).decode("utf-8"))
        except (ValueError,) + _BROKEN as e:
            raise ValueError(f"{filepath}: corrupt fastlstm model file ({_INDEX} unreadable: "
                             f"{type(e).__name__}: {e})") from None
        if not isinstance(index, dict) or index.get("format") != FORMAT:
            raise ValueError(f"{filepath} is not a fastlstm model file (format marker missing)")
        if index.get("version") != VERSION:
            raise ValueError(f"{filepath}: fastlstm model format version {index.get('version')!r}"
                             f" is not supported by this fastlstm (reads version {VERSION})")
        return zf, index, names
    except BaseException:
        zf.close()
        raise


def _array_spec(spec, name, filepath):
    """(shape tuple, dtype name) of an index entry, checked: a list of ints >= 0 and one of
    the float dtypes fastlstm writes."""
    shape = spec.get("shape") if isinstance(spec, dict) else None
    dtype = spec.get("dtype") if isinstance(spec, dict) else None
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool)
                                              and d >= 0 for d in shape) \
            or dtype not in _ARRAY_DTYPES:
        raise ValueError(f"{filepath}: corrupt model file (the index's entry for {name} is "
                         f"{spec!r}: expected a shape of non-negative integers and a dtype of "
                         f"{', '.join(_ARRAY_DTYPES)})")
    return tuple(shape), dtype


def _read_array(zf, name, filepath, shape, dtype):
    """The array of entry `name`, which must hold exactly `shape` and `dtype`; its entry is
    checked for size before anything is read."""
    nbytes = _nbytes(shape, dtype)
    size = _entry_size(zf, name, filepath, nbytes + _MAX_NPY_HEADER)
    if size < nbytes:
        raise ValueError(f"{filepath}: corrupt model file ({name} holds {size} bytes, too few "
                         f"for shape {shape} {dtype})")
    try:
        with zf.open(name) as f:    # the .npy header first: nothing allocated for a wrong one
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            got_shape, _, got_dtype = read_header(f)
        if tuple(got_shape) != tuple(shape) or str(got_dtype) != dtype:
            raise ValueError(f"its header says shape {tuple(got_shape)} and dtype {got_dtype}, "
                             f"expected {tuple(shape)} {dtype}")
        arr = np.load(io.BytesIO(zf.read(name)), allow_pickle=False)
    except (ValueError,) + _BROKEN as e:
        raise ValueError(f"{filepath}: corrupt model file ({name} unreadable: "
                         f"{type(e).__name__}: {e})") from None
    if arr.shape != tuple(shape) or str(arr.dtype) != dtype:
        raise ValueError(f"{filepath}: corrupt model file ({name} has shape {arr.shape} and "
                         f"dtype {arr.dtype}, expected {tuple(shape)} {dtype})")
    return arr


def _nbytes(shape, dtype):
    return int(np.prod(shape, dtype=object)) * np.dtype(dtype).itemsize


def _weight_specs(zf, index, filepath):
    """[(entry name, shape, dtype)] of the stored weights, from the index, with every entry's
    size checked against them (before the architecture is built and before any array is
    read, so that a damaged file fails before anything large is allocated)."""
    specs = index.get("weights")
    if not isinstance(specs, list):
        raise ValueError(f"{filepath}: corrupt model file (no weight list)")
    out = []
    for i, spec in enumerate(specs):
        name = f"weights/{i:05d}.npy"
        shape, dtype = _array_spec(spec, name, filepath)
        nbytes = _nbytes(shape, dtype)
        if _entry_size(zf, name, filepath, nbytes + _MAX_NPY_HEADER) < nbytes:
            raise ValueError(f"{filepath}: corrupt model file ({name} is too small for shape "
                             f"{shape} {dtype})")
        out.append((name, shape, dtype))
    return out


def _read_weights(zf, specs, filepath):
    return [_read_array(zf, name, filepath, shape, dtype) for name, shape, dtype in specs]


def load_model(filepath, compile=True):
    """Rebuild a Sequential model saved with ``model.save`` (architecture, weights, and,
    with ``compile=True``, its optimizer, loss, metrics and optimizer state)."""
    filepath = os.fspath(filepath)
    zf, index, names = _open(filepath)
    with zf:
        try:
            return _load_model(zf, index, filepath, compile)
        except ValueError as e:
            if str(e).startswith(filepath):
                raise
            raise ValueError(f"{filepath}: {e}") from None
        except _BROKEN as e:
            raise _broken(filepath, e) from None


def _load_model(zf, index, filepath, compile):
    from . import layers, losses, metrics, models, optimizers
    if index.get("kind") != "model":
        raise ValueError(f"{filepath} holds only weights (saved with save_weights); build "
                         "the model and call model.load_weights() instead")
    mc = index.get("model_config")
    if not isinstance(mc, dict) or mc.get("class_name") != "Sequential":
        raise ValueError(f"{filepath}: unsupported model class "
                         f"{mc.get('class_name') if isinstance(mc, dict) else None!r}")
    specs = _weight_specs(zf, index, filepath)
    # The architecture first with placeholders for its weights (nothing allocated, no
    # initializer run): its weight shapes must be the stored ones before it is built for real,
    # so that a few bytes of JSON asking for huge layers cannot make it allocate.
    try:
        with layers._weights_as_shapes():
            dry = models.Sequential.from_config(mc.get("config"))
    except (TypeError, KeyError) as e:
        raise ValueError(f"{filepath}: could not rebuild the model: {e}") from None
    if not dry.built:
        raise ValueError(f"{filepath}: the saved model has no input shape")
    if [tuple(w.shape) for w in dry.weights] != [shape for _, shape, _ in specs]:
        raise ValueError(f"{filepath}: the weights do not fit the architecture: the index lists "
                         f"{[shape for _, shape, _ in specs]}, the model has "
                         f"{[tuple(w.shape) for w in dry.weights]}")
    del dry
    model = models.Sequential.from_config(mc.get("config"))
    weights = _read_weights(zf, specs, filepath)
    try:
        model.set_weights(weights)
    except ValueError as e:
        raise ValueError(f"{filepath}: the weights do not fit the architecture: {e}") from None
    cc = index.get("compile_config")
    if compile and cc:
        if not isinstance(cc, dict) or not isinstance(cc.get("metrics", []), list):
            raise ValueError(f"{filepath}: corrupt model file (compile_config is {cc!r})")
        model.compile(optimizer=optimizers.deserialize(cc["optimizer"]),
                      loss=None if cc.get("loss") is None else losses.deserialize(cc["loss"]),
                      metrics=[m if isinstance(m, str) else metrics.get(m)
                               for m in cc.get("metrics", [])])
        st = index.get("optimizer_state")
        if st:
            _restore_optimizer(zf, st, model, filepath)
    return model


def _restore_optimizer(zf, st, model, filepath):
    """The optimizer's iterations and slots: one array per slot and weight, each of that
    weight's shape and dtype; the weights are the trainable ones, or those at the positions
    (in model.weights) the state's "variables" lists (layers frozen after training)."""
    slots = st.get("slots") if isinstance(st, dict) else None
    iterations = st.get("iterations") if isinstance(st, dict) else None
    if not isinstance(slots, dict) or not isinstance(iterations, int) or isinstance(iterations, bool) \
            or iterations < 0:
        raise ValueError(f"{filepath}: corrupt model file (optimizer_state is {st!r})")
    variables = model.trainable_weights
    positions = st.get("variables")
    if positions is not None:
        n = len(model.weights)
        if not isinstance(positions, list) or not all(
                isinstance(i, int) and not isinstance(i, bool) and 0 <= i < n for i in positions) \
                or len(set(positions)) != len(positions):
            raise ValueError(f"{filepath}: corrupt model file (optimizer_state's variables is "
                             f"{positions!r}: expected distinct positions among the model's {n} "
                             "weights)")
        variables = [model.weights[i] for i in positions]
    if any(count != len(variables) for count in slots.values()):
        # e.g. layers frozen after training and before saving: the state belongs to other
        # variables; the model itself is whole
        warnings.warn(f"{filepath}: the optimizer state was not restored: its slots hold "
                      f"{sorted(set(slots.values()), key=str)} arrays each, the model has "
                      f"{len(variables)} trainable weights", RuntimeWarning, stacklevel=3)
        return
    state = {"iterations": iterations}
    for slot in slots:
        state[slot] = [_read_array(zf, f"optimizer/{slot}/{i:05d}.npy", filepath, tuple(v.shape),
                                   str(v.dtype)) for i, v in enumerate(variables)]
    model.optimizer.set_state(state)
    if positions is not None:
        # bound to those weights, so that fit goes on with the same optimizer (the frozen
        # ones get no gradient; Sequential._as_optimizer_variables). A state without slots
        # (SGD without momentum) builds nothing in set_state: built here for those weights
        # (no slots to create), as the saved optimizer was.
        if not model.optimizer.built:
            model.optimizer.build(variables)
        model.optimizer._check_known(variables, bind=True)


def load_weights(model, filepath):
    """Copy the weights stored in ``filepath`` (a model or weights file) into ``model``."""
    filepath = os.fspath(filepath)
    zf, index, names = _open(filepath)
    with zf:
        try:
            weights = _read_weights(zf, _weight_specs(zf, index, filepath), filepath)
        except _BROKEN as e:
            raise _broken(filepath, e) from None
    if not model.built:
        raise ValueError("load_weights: build the model first (give the first layer an "
                         "input_shape or call build())")
    try:
        model.set_weights(weights)
    except ValueError as e:
        raise ValueError(f"{filepath}: the weights do not fit the model: {e}") from None
