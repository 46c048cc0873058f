"""Run a NetX network on Lava's CPU simulator; executed with the Lava environment's Python (3.10).

Usage: ``python lava_runner.py NET_FILE IN_NPZ OUT_NPZ [NET_FILE IN_NPZ OUT_NPZ ...]`` (several jobs share
one process, so Lava is imported once). ``IN_NPZ`` holds ``spikes`` ``[T, B, *input]``
(0/1) and ``steps``; ``OUT_NPZ`` receives ``layer_<i>`` ``[steps, B, *shape_i]`` for every layer (neurosim's
``[C, H, W]`` order for conv layers) and ``v_<i>`` ``[B, *shape_i]``, every layer's membrane ``v`` after the
sample's last step (Lava's integers). Every sample starts from rest: the network is built and compiled once,
run ``steps`` steps per sample, and between samples each layer's ``u``, ``v`` and synapse buffer are zeroed.
This file must not import neurosim (it runs outside the main environment).
"""
import os
import sys
import time

# This file's folder holds neurosim modules (lava_sim.py, netx.py...) that must not shadow Lava's packages.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.getcwd()) != _HERE]

import numpy as np  # noqa: E402


def _to_lava(x: np.ndarray) -> np.ndarray:
    """[T, C, H, W] -> Lava's [W, H, C, T] (XYZ order); [T, N] -> [N, T]."""
    return np.ascontiguousarray(np.moveaxis(x, 0, -1) if x.ndim == 2 else x.transpose(3, 2, 1, 0))


def _from_lava(y: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_to_lava` for one layer's sink data."""
    return np.moveaxis(y, -1, 0) if y.ndim == 2 else y.transpose(3, 2, 1, 0)


def run_one(net_file: str, in_npz: str, out_npz: str) -> None:
    t0 = time.time()
    from lava.lib.dl import netx
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc import io

    data = np.load(in_npz)
    spikes = data["spikes"].astype(np.int32)
    steps = int(data["steps"])
    t_in, batch = spikes.shape[:2]
    net = netx.hdf5.Network(net_config=net_file)
    in_shape = tuple(net.inp.shape)
    x = np.zeros((steps, batch) + spikes.shape[2:], dtype=np.int32)
    x[:t_in] = spikes
    # One long stream: sample b occupies steps [b*steps, (b+1)*steps).
    per_sample = [_to_lava(x[:, b].reshape((steps,) + (in_shape if len(in_shape) == 1 else spikes.shape[2:])))
                  for b in range(batch)]
    if per_sample[0].shape[:-1] != in_shape:
        raise SystemExit(f"input spikes {spikes.shape} do not fit the network input {in_shape}")
    source = io.source.RingBuffer(data=np.concatenate(per_sample, axis=-1))
    sinks = []
    for layer in net.layers:
        sink = io.sink.RingBuffer(shape=layer.out.shape, buffer=steps * batch)
        layer.out.connect(sink.a_in)
        sinks.append(sink)
    source.s_out.connect(net.inp)
    cfg = Loihi2SimCfg(select_tag="fixed_pt", select_sub_proc_model=True)
    volts = [[] for _ in net.layers]
    try:
        for b in range(batch):
            if b:
                for layer in net.layers:
                    layer.neuron.u.set(np.zeros(layer.neuron.u.shape))
                    layer.neuron.v.set(np.zeros(layer.neuron.v.shape))
                    syn = layer.synapse
                    buf = syn.a_buff if hasattr(syn, "a_buff") else syn.a_buf
                    buf.set(np.zeros(buf.shape))
            net.run(condition=RunSteps(num_steps=steps), run_cfg=cfg)
            for i, layer in enumerate(net.layers):
                v = np.asarray(layer.neuron.v.get()).astype(np.int64)
                volts[i].append(v if v.ndim == 1 else v.transpose(2, 1, 0))
        outs = [s.data.get() for s in sinks]
    finally:
        net.stop()
    result = {}
    for i, y in enumerate(outs):
        per = [_from_lava(y[..., b * steps:(b + 1) * steps]) for b in range(batch)]
        result[f"layer_{i}"] = np.stack(per, axis=1).astype(np.uint8)
        result[f"v_{i}"] = np.stack(volts[i])
    np.savez(out_npz, **result)
    print(f"lava_runner: {len(net.layers)} layers, {batch} samples x {steps} steps in {time.time() - t0:.1f} s",
          file=sys.stderr)


def inspect(net_file: str, out_npz: str) -> None:
    """Load ``net_file`` with ``netx.hdf5.Network`` and save what Lava built: per layer the block type, shape,
    neuron parameters and the synapse weights/exponent Lava's process will use."""
    from lava.lib.dl import netx

    net = netx.hdf5.Network(net_config=net_file)
    out = {"num_layers": np.int64(len(net.layers)), "inp_shape": np.array(net.inp.shape),
           "out_shape": np.array(net.out.shape)}
    for i, layer in enumerate(net.layers):
        n, syn = layer.neuron, layer.synapse
        out[f"{i}_block"] = np.array(type(layer).__name__)
        out[f"{i}_shape"] = np.array(layer.shape)
        for key in ("du", "dv", "vth", "bias_mant", "bias_exp"):
            out[f"{i}_{key}"] = np.asarray(getattr(n, key).init)
        if hasattr(syn, "weights"):
            out[f"{i}_weight"] = np.asarray(syn.weights.init)
            out[f"{i}_weight_exp"] = np.asarray(syn.proc_params.get("weight_exp", 0))
        else:
            out[f"{i}_weight"] = np.asarray(syn.weight.init)
            for key in ("stride", "padding", "dilation", "groups"):
                out[f"{i}_{key}"] = np.asarray(getattr(syn, key).init)
    np.savez(out_npz, **out)


def main(args) -> None:
    """Jobs, in order: ``NET IN OUT`` (simulate) or ``--inspect NET OUT`` (describe what NetX built)."""
    i = 0
    if not args:
        raise SystemExit("usage: lava_runner.py [--inspect NET OUT | NET IN OUT] ...")
    while i < len(args):
        if args[i] == "--inspect" and i + 2 < len(args):
            inspect(args[i + 1], args[i + 2])
            i += 3
        elif args[i] != "--inspect" and i + 2 < len(args):
            run_one(*args[i:i + 3])
            i += 3
        else:
            raise SystemExit("usage: lava_runner.py [--inspect NET OUT | NET IN OUT] ...")


if __name__ == "__main__":
    main(sys.argv[1:])
