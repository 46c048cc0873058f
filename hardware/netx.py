"""Lava-DL NetX network files (HDF5): writing an exported network and reading one back.

Layout written (what ``lava.lib.dl.netx.hdf5.Network`` reads, see lava-dl 0.6.0 ``netx/hdf5.py``):

* ``simulation/Ts = 1``, ``simulation/tSample`` = steps per sample;
* ``layer/0``: ``type = [b"input"]`` and ``shape`` only (no ``neuron`` group), so ``Network.inp`` feeds the
  first synapse directly with the input spikes (``[features]`` or ``[C, H, W]``);
* ``layer/i`` dense: ``type [b"dense"]``, ``shape [out]``, ``inFeatures``, ``outFeatures``, ``weight``
  ``[out, in]`` (float32 holding integers), optional ``bias`` and a ``neuron`` group;
* conv: ``type [b"conv"]``, ``shape [C_out, H, W]``, ``inChannels``, ``outChannels``, ``kernelSize``,
  ``stride``, ``padding``, ``dilation`` ``[y, x]``, ``groups``, ``weight [C_out, C_in, kh, kw, 1]``;
* ``type [b"flatten"]`` before a dense layer that follows a conv layer;
* ``neuron``: ``type b"CUBA"``, ``iDecay``, ``vDecay``, ``vThMant``, ``refDelay = 1``, ``gradedSpike = False``.

neurosim also stores, as attributes (ignored by NetX), its version, each layer's name and weight scale.
The file is written to a temporary name and renamed, so a failed export never leaves a partial file.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .graph import ExportError
from .loihi import BIAS_MAX, DECAY_UNITY, VTH_MAX, QLayer

FORMAT = "neurosim.netx"


def _ascii(s: str):
    return np.array([s.encode("ascii")])


def write_netx(path, layers: list, input_shape: tuple, steps: int = 0) -> Path:
    import h5py

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with h5py.File(tmp, "w") as f:
            import neurosim
            f.attrs["format"] = FORMAT
            f.attrs["neurosim_version"] = neurosim.__version__
            sim = f.create_group("simulation")
            sim["Ts"] = 1
            sim["tSample"] = int(steps)
            group = f.create_group("layer")
            first_in = layers[0].in_shape
            g = group.create_group("0")
            g["type"] = _ascii("input")
            g["shape"] = np.array(first_in, dtype=np.int64)
            idx = 1
            for q in layers:
                if q.flatten_before and idx > 1:
                    g = group.create_group(str(idx))
                    g["type"] = _ascii("flatten")
                    idx += 1
                g = group.create_group(str(idx))
                idx += 1
                g.attrs["neurosim_name"] = q.name
                g.attrs["neurosim_scale"] = q.scale
                g["shape"] = np.array(q.out_shape, dtype=np.int64)
                if q.kind == "dense":
                    g["type"] = _ascii("dense")
                    g["inFeatures"] = int(q.weight.shape[1])
                    g["outFeatures"] = int(q.weight.shape[0])
                    g["weight"] = q.weight.astype(np.float32)
                else:
                    g["type"] = _ascii("conv")
                    g["inChannels"] = int(q.weight.shape[1] * q.groups)
                    g["outChannels"] = int(q.weight.shape[0])
                    g["kernelSize"] = np.array(q.weight.shape[2:], dtype=np.int64)
                    g["stride"] = np.array(q.stride, dtype=np.int64)
                    g["padding"] = np.array(q.padding, dtype=np.int64)
                    g["dilation"] = np.array(q.dilation, dtype=np.int64)
                    g["groups"] = int(q.groups)
                    g["weight"] = q.weight[..., None].astype(np.float32)
                if q.bias is not None:
                    g["bias"] = q.bias.astype(np.float32)
                n = g.create_group("neuron")
                n["type"] = _ascii("CUBA")
                n["iDecay"] = int(q.i_decay)
                n["vDecay"] = int(q.v_decay)
                n["vThMant"] = int(q.vth)
                n["refDelay"] = 1
                n["gradedSpike"] = False
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _scalar(g, key):
    v = np.asarray(g[key][()])
    return v.reshape(-1)[0] if v.size else None


def _str(g, key):
    v = np.asarray(g[key][()]).reshape(-1)[0]
    return v.decode("ascii") if isinstance(v, bytes) else str(v)


def _unmodelled(g, n) -> list:
    """Why the fields of layer ``g`` (neuron ``n``) that Lava-DL acts on but the Loihi mode does not model make it
    unreadable: non-zero synaptic ``delay``, non-zero ``messageBits`` (graded spikes), complex weights."""
    import h5py

    out = []
    if "delay" in g and np.any(np.asarray(g["delay"][()], dtype=np.float64)):
        out.append(f"synaptic delays (up to {np.max(g['delay'][()]):g} steps) are not simulated by the Loihi mode")
    bits = int(_scalar(n, "messageBits") or 0) if "messageBits" in n else 0
    if bits:
        out.append(f"neuron messageBits {bits} (graded spikes) is not simulated by the Loihi mode (binary spikes: 0)")
    if isinstance(g.get("weight"), h5py.Group):
        out.append("complex weights (weight/real, weight/imag) are not simulated by the Loihi mode")
    return out


def read_netx(path):
    """Read a NetX file written by neurosim (or any dense/conv CUBA network) into Loihi-mode layers.

    Returns ``(layers, input_shape)``. A file that is missing, not HDF5, or whose layers are malformed, of a
    type the Loihi mode does not simulate or carry fields Lava-DL acts on that it does not model (synaptic
    delays, graded spikes, complex weights) raises :class:`ExportError` (a ``ValueError``) naming each problem.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise ExportError([(str(path), "no such file")], "cannot read the NetX file")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise ExportError([(str(path), f"not an HDF5 file ({err})")], "cannot read the NetX file") from None
    problems, layers = [], []
    with f:
        if "layer" not in f:
            raise ExportError([(str(path), "no 'layer' group")], "cannot read the NetX file")
        group = f["layer"]
        keys = sorted(group.keys(), key=lambda k: int(k) if k.isdigit() else -1)
        if not keys or keys != [str(i) for i in range(len(keys))]:
            raise ExportError([(str(path), f"layer groups must be named 0..L-1, found {list(group.keys())}")],
                              "cannot read the NetX file")
        shape, flatten = None, False
        for k in keys:
            g = group[k]
            where = f"layer/{k}"
            try:
                kind = _str(g, "type")
                if kind == "input":
                    if "neuron" in g:
                        problems.append((where, "input layers with their own neurons are not simulated"))
                    shape = tuple(int(s) for s in np.asarray(g["shape"][()]).reshape(-1))
                    continue
                if kind == "flatten":
                    flatten = True
                    continue
                if kind not in ("dense", "conv"):
                    problems.append((where, f"layer type {kind!r} is not supported (dense, conv, flatten, input)"))
                    continue
                n = g["neuron"]
                if _str(n, "type") != "CUBA":
                    problems.append((where, f"neuron type {_str(n, 'type')!r} is not CUBA"))
                    continue
                unmodelled = _unmodelled(g, n)
                if unmodelled:
                    problems += [(where, why) for why in unmodelled]
                    continue
                w = np.asarray(g["weight"][()], dtype=np.float64)
                if not np.all(np.isfinite(w)) or np.any(w != np.rint(w)):
                    problems.append((where, "weights must be finite integers"))
                    continue
                if not np.any(w):
                    problems.append((where, "all weights are zero (Lava's weight-bit optimiser divides by the "
                                            "largest weight)"))
                    continue
                w = w.astype(np.int64)
                bias = np.asarray(g["bias"][()], dtype=np.float64).astype(np.int64) if "bias" in g else None
                out_shape = tuple(int(s) for s in np.asarray(g["shape"][()]).reshape(-1))
                i_decay, v_decay, vth = (int(_scalar(n, key)) for key in ("iDecay", "vDecay", "vThMant"))
                if not (1 <= i_decay <= DECAY_UNITY and 0 <= v_decay <= DECAY_UNITY and 0 <= vth <= VTH_MAX):
                    problems.append((where, f"iDecay {i_decay} (1..4096), vDecay {v_decay} (0..4096) or vThMant "
                                            f"{vth} (0..{VTH_MAX}) out of range"))
                if bias is not None and np.abs(bias).max(initial=0) > BIAS_MAX:
                    problems.append((where, f"bias mantissa beyond +-{BIAS_MAX}"))
                if shape is None:
                    problems.append((where, "input shape unknown (no input layer before it)"))
                    continue
                in_shape = shape
                if kind == "dense":
                    if w.ndim != 2 or w.shape[0] != int(np.prod(out_shape)):
                        problems.append((where, f"weight shape {w.shape} does not match layer shape {out_shape}"))
                        continue
                    if int(np.prod(in_shape)) != w.shape[1]:
                        problems.append((where, f"weight expects {w.shape[1]} inputs, previous layer gives "
                                                f"{in_shape}"))
                        continue
                    q = QLayer(str(g.attrs.get("neurosim_name", where)), "dense", w, bias, i_decay, v_decay, vth,
                               (int(np.prod(in_shape)),) if len(in_shape) != 1 else in_shape, out_shape,
                               flatten_before=flatten, scale=float(g.attrs.get("neurosim_scale", 1.0)))
                else:
                    if w.ndim == 5:
                        w = w[..., 0]
                    groups = int(_scalar(g, "groups"))
                    pair = lambda key: tuple(int(s) for s in np.broadcast_to(np.asarray(g[key][()]), (2,)))  # noqa
                    if w.ndim != 4 or len(in_shape) != 3 or w.shape[1] * groups != in_shape[0]:
                        problems.append((where, f"conv weight {w.shape} does not fit input {in_shape}"))
                        continue
                    q = QLayer(str(g.attrs.get("neurosim_name", where)), "conv", w, bias, i_decay, v_decay, vth,
                               in_shape, out_shape, stride=pair("stride"), padding=pair("padding"),
                               dilation=pair("dilation"), groups=groups,
                               scale=float(g.attrs.get("neurosim_scale", 1.0)))
                    kh, kw = w.shape[2:]
                    oh = (in_shape[1] + 2 * q.padding[0] - q.dilation[0] * (kh - 1) - 1) // q.stride[0] + 1
                    ow = (in_shape[2] + 2 * q.padding[1] - q.dilation[1] * (kw - 1) - 1) // q.stride[1] + 1
                    if out_shape != (w.shape[0], oh, ow):
                        problems.append((where, f"layer shape {out_shape} != conv output {(w.shape[0], oh, ow)}"))
                        continue
                layers.append(q)
                shape, flatten = out_shape, False
            except KeyError as err:
                problems.append((where, f"missing field {err}"))
            except (ValueError, TypeError, IndexError) as err:
                problems.append((where, f"malformed field ({err})"))
        input_shape = layers[0].in_shape if layers else None
    if not layers and not problems:
        problems.append((str(path), "no dense/conv layers"))
    if problems:
        raise ExportError(problems, f"cannot read the NetX file {str(path)!r}")
    return layers, input_shape
