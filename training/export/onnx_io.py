"""ONNX export with ``torch.onnx.export(..., dynamo=True)`` and the ONNX Runtime vs PyTorch parity check.

FFT choice (measured, see docs/serving.md): the models are built with ``fft_backend="matmul"``, the
centred DFT as in-graph matrix products whose matrices are computed from the input shape. ONNX
Runtime's ``DFT`` operator (what ``fft_backend="torch"`` exports to) is slower on CPU and only accurate
to about 1e-4 for sizes that are not powers of two; the matrix products match PyTorch to ~1e-6.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from mrcore.durable import durable_path

from .spec import ServableModel

log = logging.getLogger(__name__)

#: ONNX opset of the exported graphs (torch 2.13's dynamo exporter default)
OPSET = 20
#: largest relative error (max |ort - torch| / max |torch|) accepted by :func:`check_parity`
PARITY_TOLERANCE = 1e-5


def export_onnx(model: ServableModel, path: Path) -> Path:
    """Export ``model.module`` to ``path`` (ONNX, weights embedded, every dynamic axis dynamic).

    The file is written crash-safely (:mod:`mrcore.durable`); the graph is checked with ``onnx.checker``.
    """
    path = Path(path)
    module = model.module.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            model.example,
            dynamo=True,
            opset_version=OPSET,
            input_names=[t.name for t in model.inputs],
            output_names=[t.name for t in model.outputs],
            dynamic_shapes=tuple(model.dynamic.get(t.name, {}) for t in model.inputs),
            verbose=False,
            report=False,
        )
    with durable_path(path) as tmp:
        program.save(str(tmp), external_data=False)
        proto = onnx.load(str(tmp))
        strip_debug_metadata(proto)
        onnx.checker.check_model(proto)
        check_io(proto, model)
        onnx.save(proto, str(tmp))
    return path


def strip_debug_metadata(proto) -> None:
    """Drop the exporter's per-node debug metadata (Python stack traces with source paths and line
    numbers, FX node dumps): the served file then depends only on the graph and the weights."""
    graphs = [proto.graph]
    while graphs:
        graph = graphs.pop()
        for node in graph.node:
            del node.metadata_props[:]
            node.doc_string = ""
            for attr in node.attribute:
                if attr.HasField("g"):
                    graphs.append(attr.g)
                graphs.extend(attr.graphs)


def check_io(proto, model: ServableModel) -> None:
    """Raise ``ValueError`` when the ONNX graph's inputs/outputs differ from ``model``'s tensor specs."""

    def dims(value_info) -> tuple[int, ...]:
        return tuple(d.dim_value if d.HasField("dim_value") else -1 for d in value_info.type.tensor_type.shape.dim)

    for kind, declared, actual in (("input", model.inputs, proto.graph.input), ("output", model.outputs, proto.graph.output)):
        got = {v.name: dims(v) for v in actual}
        want = {t.name: tuple(t.shape) for t in declared}
        if list(got) != list(want):
            raise ValueError(f"{model.name}: ONNX {kind}s {list(got)} differ from the declared {list(want)}")
        for name, shape in want.items():
            if len(got[name]) != len(shape) or any(w != -1 and g != w for g, w in zip(got[name], shape)):
                raise ValueError(f"{model.name}: ONNX {kind} {name!r} has shape {got[name]}, declared {shape}")


def ort_session(path: Path, threads: int = 0):
    """A CPU ONNX Runtime session for ``path`` (``threads=0``: ONNX Runtime's default)."""
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def relative_error(actual: np.ndarray, reference: np.ndarray) -> float:
    """``max |actual - reference| / max |reference|`` (the parity measure)."""
    scale = float(np.abs(reference).max()) or 1.0
    return float(np.abs(actual.astype(np.float64) - reference.astype(np.float64)).max() / scale)


def check_parity(model: ServableModel, path: Path, session=None) -> dict[str, float]:
    """Run every parity case through PyTorch and ONNX Runtime; return ``{case/output: relative error}``.

    Raises ``AssertionError`` naming the model, case and output when an error exceeds
    :data:`PARITY_TOLERANCE`.
    """
    session = session or ort_session(path)
    errors: dict[str, float] = {}
    module = model.module.eval()
    for label, inputs in model.parity_cases:
        with torch.no_grad():
            ref = module(*(torch.from_numpy(inputs[t.name]) for t in model.inputs))
        ref = ref if isinstance(ref, (tuple, list)) else (ref,)
        got = session.run([t.name for t in model.outputs], {t.name: inputs[t.name] for t in model.inputs})
        for spec, r, g in zip(model.outputs, ref, got):
            if tuple(g.shape) != tuple(r.shape):
                raise AssertionError(f"{model.name}: case {label!r} output {spec.name!r}: ONNX shape {g.shape}, torch {tuple(r.shape)}")
            err = relative_error(g, r.numpy())
            errors[f"{label}/{spec.name}"] = err
            if not err <= PARITY_TOLERANCE:
                raise AssertionError(f"{model.name}: case {label!r} output {spec.name!r}: relative error {err:.2e} "
                                     f"> {PARITY_TOLERANCE:.0e} (ONNX Runtime vs PyTorch)")
    return errors


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file (model cards record it)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
