"""Rewrites of an ONNX graph into operators that ONNX Runtime's CPU kernels run faster or leaner.

Applied when a :class:`medkern.Model` is loaded. Both keep the network's function:

* ``PRelu`` whose slope is a single float32 constant (``torch.nn.PReLU()``'s default, used in
  every MONAI ``UNet`` / ``ResidualUnit`` block) becomes ``LeakyRelu(alpha=slope)``, bit for bit.
  ONNX Runtime runs PRelu through its general broadcasting path, LeakyRelu as one vectorised
  pass: on the MONAI UNet of ``benchmarks/bench_inference.py`` the network runs about 15 % faster.
* A strided ``ConvTranspose`` with few output channels (a segmentation head: ``out_channels <=
  4``) becomes its sub-pixel form: one ``Conv`` on the input grid that computes every output
  phase (``stride**ndim`` of them) as extra channels, then ``Reshape`` / ``Transpose`` /
  ``Reshape`` to interleave the phases. ONNX Runtime's ConvTranspose first expands a column
  buffer of ``out_channels * kernel**ndim`` rows per input voxel (24 MB for the benchmark UNet's
  last layer on a 96^3 patch) and scatters it back; the sub-pixel form needs no such buffer, which
  halves the network's working memory on that UNet for a few per cent of time. The sums run in
  another order, so outputs agree to float32 rounding.
"""

from __future__ import annotations

import itertools

import numpy as np

__all__ = ["optimize_graph"]

# Output channels up to which a ConvTranspose is rewritten: beyond a few channels the column
# buffer is no longer the larger cost and the sub-pixel Conv's zero taps are.
_SUBPIXEL_MAX_CHANNELS = 4


def _constant_values(graph) -> dict:
    """Name -> TensorProto of the graph's fixed constants (initializers that are not inputs too,
    and Constant nodes), following Identity chains (PyTorch's export shares weights that way)."""
    overridable = {i.name for i in graph.input}
    values = {t.name: t for t in graph.initializer if t.name not in overridable}
    for node in graph.node:
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            values[node.output[0]] = node.attribute[0].t
    changed = True
    while changed:  # Identity nodes are not in topological order with respect to each other
        changed = False
        for node in graph.node:
            if node.op_type == "Identity" and node.input[0] in values and node.output[0] not in values:
                values[node.output[0]] = values[node.input[0]]
                changed = True
    return values


def _float32_array(tensor) -> np.ndarray | None:
    from onnx import TensorProto, numpy_helper

    if tensor is None or tensor.data_type != TensorProto.FLOAT or tensor.data_location == TensorProto.EXTERNAL:
        return None
    return numpy_helper.to_array(tensor)


def _leaky_relu(node, values) -> list | None:
    """PRelu with a one-element float32 slope -> LeakyRelu (bit-exact)."""
    from onnx import helper

    if len(node.input) != 2:
        return None
    slope = _float32_array(values.get(node.input[1]))
    if slope is None or slope.size != 1:
        return None
    # LeakyRelu's float32 attribute holds the slope exactly; the output keeps X's shape, as
    # PRelu's unidirectional broadcast of a one-element slope does.
    return [helper.make_node("LeakyRelu", [node.input[0]], list(node.output), name=node.name,
                             alpha=float(slope.reshape(-1)[0]))]


def _ints(node, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return list(a.ints) if a.ints else a.s.decode() if a.s else a.i
    return default


def _subpixel(node, values, unique) -> tuple[list, list] | None:
    """Strided ConvTranspose with <= 4 output channels -> Conv + phase interleave, or None.

    Along an axis with stride s, kernel k and begin padding p, output ``y[s*m + r]`` sums
    ``x[m + q - t] * w[c + s*t]`` over taps t, with ``c = (r + p) % s`` and ``q = (r + p) // s``.
    All phases r read input offsets in one window, so a single Conv over it (zero weights where
    a phase has fewer taps) yields every phase; the output has exactly ``s`` times the input's
    length when ``k - p_begin - p_end + output_padding == s``, the case rewritten.
    """
    from onnx import helper, numpy_helper

    if len(node.input) < 2:
        return None
    weight = _float32_array(values.get(node.input[1]))
    bias = _float32_array(values.get(node.input[2])) if len(node.input) > 2 and node.input[2] else None
    if weight is None or weight.ndim < 3 or (len(node.input) > 2 and node.input[2] and bias is None):
        return None
    nsp = weight.ndim - 2
    c_in, c_out = weight.shape[:2]
    kernel = list(weight.shape[2:])
    strides = _ints(node, "strides", [1] * nsp)
    pads = _ints(node, "pads", [0] * (2 * nsp))
    out_pad = _ints(node, "output_padding", [0] * nsp)
    if (_ints(node, "group", 1) != 1 or _ints(node, "dilations", [1] * nsp) != [1] * nsp
            or _ints(node, "auto_pad", "NOTSET") != "NOTSET" or _ints(node, "output_shape", None) is not None
            or _ints(node, "kernel_shape", kernel) != kernel or c_out > _SUBPIXEL_MAX_CHANNELS
            or len(strides) != nsp or len(pads) != 2 * nsp or len(out_pad) != nsp or max(strides) < 2):
        return None
    windows = []
    for a in range(nsp):
        s, k, begin = strides[a], kernel[a], pads[a]
        if k - begin - pads[nsp + a] + out_pad[a] != s:
            return None
        taps = []  # per phase: (first weight index c, input offset q of tap 0, number of taps)
        for r in range(s):
            c, q = (r + begin) % s, (r + begin) // s
            taps.append((c, q, max(0, -(-(k - c) // s))))
        low = min(q - n + 1 for _, q, n in taps if n) if any(n for *_, n in taps) else 0
        high = max(q for _, q, n in taps if n) if any(n for *_, n in taps) else 0
        if low > 0 or high < 0:
            return None
        windows.append((taps, low, high))
    phases = list(itertools.product(*(range(s) for s in strides)))
    conv_w = np.zeros((c_out, len(phases), c_in) + tuple(h - lo + 1 for _, lo, h in windows), np.float32)
    for p, phase in enumerate(phases):
        per_axis = [[(c + s * t, q - t - lo) for t in range(n)]
                    for (taps, lo, _), s, r in zip(windows, strides, phase) for c, q, n in [taps[r]]]
        for combo in itertools.product(*per_axis):
            src = tuple(w for w, _ in combo)
            dst = tuple(j for _, j in combo)
            conv_w[(slice(None), p, slice(None)) + dst] = weight[(slice(None), slice(None)) + src].T
    conv_w = conv_w.reshape((c_out * len(phases), c_in) + conv_w.shape[3:])
    conv_b = np.repeat(bias if bias is not None else np.zeros(c_out, np.float32), len(phases)).astype(np.float32)
    name = unique(node.name or "ConvTranspose")
    inits = [numpy_helper.from_array(conv_w, f"{name}/W"), numpy_helper.from_array(conv_b, f"{name}/B"),
             numpy_helper.from_array(np.array([0], np.int64), f"{name}/batch_axis"),
             numpy_helper.from_array(np.arange(2, 2 + nsp, dtype=np.int64), f"{name}/spatial_axes"),
             numpy_helper.from_array(np.array([c_out, *strides], np.int64), f"{name}/phase_dims"),
             numpy_helper.from_array(np.array([c_out], np.int64), f"{name}/channels"),
             numpy_helper.from_array(np.array(strides, np.int64), f"{name}/strides")]
    x = node.input[0]
    conv_pads = [-lo for _, lo, _ in windows] + [h for _, _, h in windows]
    nodes = [
        helper.make_node("Conv", [x, f"{name}/W", f"{name}/B"], [f"{name}/phases"], name=f"{name}/Conv",
                         kernel_shape=list(conv_w.shape[2:]), pads=conv_pads),
        helper.make_node("Shape", [x], [f"{name}/shape"]),
        helper.make_node("Gather", [f"{name}/shape", f"{name}/batch_axis"], [f"{name}/n"], axis=0),
        helper.make_node("Gather", [f"{name}/shape", f"{name}/spatial_axes"], [f"{name}/size"], axis=0),
        helper.make_node("Concat", [f"{name}/n", f"{name}/phase_dims", f"{name}/size"], [f"{name}/split_shape"],
                         axis=0),
        helper.make_node("Reshape", [f"{name}/phases", f"{name}/split_shape"], [f"{name}/split"]),
        # (N, C, s_0.., L_0..) -> (N, C, L_0, s_0, L_1, s_1, ..): each phase lands after its voxel.
        helper.make_node("Transpose", [f"{name}/split"], [f"{name}/interleaved"],
                         perm=[0, 1] + [i for a in range(nsp) for i in (2 + nsp + a, 2 + a)]),
        helper.make_node("Mul", [f"{name}/size", f"{name}/strides"], [f"{name}/out_size"]),
        helper.make_node("Concat", [f"{name}/n", f"{name}/channels", f"{name}/out_size"], [f"{name}/out_shape"],
                         axis=0),
        helper.make_node("Reshape", [f"{name}/interleaved", f"{name}/out_shape"], list(node.output)),
    ]
    return nodes, inits


def optimize_graph(model) -> int:
    """Rewrite ``model`` (an ``onnx.ModelProto``, top-level graph) in place; returns the number
    of nodes rewritten."""
    graph = model.graph
    values = _constant_values(graph)
    # The sub-pixel form's Reshape takes its shape as an input (opset 5 on); opset 13 is what
    # current exporters write and what it is tested with.
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    taken = {n.name for n in graph.node} | {t.name for t in graph.initializer}

    def unique(base: str) -> str:
        name, n = f"{base}/subpixel", 1
        while any(t.startswith(name) for t in taken):
            n += 1
            name = f"{base}/subpixel{n}"
        taken.add(name)
        return name

    rewritten, count = [], 0
    for node in graph.node:
        new = None
        if node.domain in ("", "ai.onnx"):
            if node.op_type == "PRelu":
                new = (_leaky_relu(node, values), [])
            elif node.op_type == "ConvTranspose" and opset >= 13:
                new = _subpixel(node, values, unique)
        if new is None or new[0] is None:
            rewritten.append(node)
            continue
        rewritten.extend(new[0])
        graph.initializer.extend(new[1])
        count += 1
    if count:
        del graph.node[:]
        graph.node.extend(rewritten)
        # Weights only the replaced nodes read would be dropped by ONNX Runtime with a warning.
        used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
        kept = [t for t in graph.initializer if t.name in used]
        del graph.initializer[:]
        graph.initializer.extend(kept)
    return count
