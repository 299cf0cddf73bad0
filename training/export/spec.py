"""What a model family hands to the exporter: one :class:`ServableModel` per model to serve."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass(frozen=True)
class TensorSpec:
    """One input or output tensor of a served model.

    ``shape`` is the full shape including the leading batch dimension, with ``-1`` for dynamic axes,
    e.g. ``(-1, -1, -1, -1, 2)`` for ``kspace: float32 [batch, coils, ky, kx, 2]``.
    """

    name: str
    shape: tuple[int, ...]
    description: str
    dtype: str = "float32"

    @property
    def triton_dims(self) -> list[int]:
        """Dimensions without the batch axis, as Triton's ``dims`` with ``max_batch_size > 0``."""
        return list(self.shape[1:])


@dataclass
class ServableModel:
    """A trained generator ready for ONNX export.

    Attributes
    ----------
    name : Triton model name, e.g. ``"recon_unrolled"`` or ``"synth_t1w_to_t2w"``.
    task : ``"reconstruction"`` or ``"synthesis"``.
    module : the ``nn.Module`` to export (eval mode; FFTs as in-graph matrix products).
    inputs, outputs : tensor specs in the module's argument / return order (batch axis first).
    example : example input tensors in argument order, used to trace the graph.
    dynamic : per input, ``{axis: torch.export.Dim}`` for every dynamic axis.
    parity_cases : ``(label, inputs)`` pairs of numpy inputs on which ONNX Runtime must match PyTorch
        (fresh random data, real data, a non-power-of-two shape).
    card : extra model-card fields (training data, metrics, privacy budget, ...).
    parameters : Triton model-config parameters the serving client reads (e.g. ``{"virtual_coils": "8"}``).
    all_versions : keep every version of the model loaded (Triton's ``version_policy: { all { } }``) so that a
        request can pin an older one; otherwise only the latest is served.
    """

    name: str
    task: str
    module: torch.nn.Module
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    example: tuple[torch.Tensor, ...]
    dynamic: dict[str, dict[int, object]]
    parity_cases: list[tuple[str, dict[str, np.ndarray]]] = field(default_factory=list)
    card: dict = field(default_factory=dict)
    parameters: dict[str, str] = field(default_factory=dict)
    all_versions: bool = False

    def __post_init__(self) -> None:
        if len(self.example) != len(self.inputs):
            raise ValueError(f"{self.name}: {len(self.example)} example tensors for {len(self.inputs)} inputs")
        names = [t.name for t in self.inputs]
        unknown = set(self.dynamic) - set(names)
        if unknown:
            raise ValueError(f"{self.name}: dynamic axes given for unknown inputs {sorted(unknown)}; inputs: {names}")
