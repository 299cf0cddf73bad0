"""Export of trained generators to ONNX and into a Triton model repository.

    spec.py        ServableModel: what a family hands over (module, example inputs, dynamic axes, parity cases)
    onnx_io.py     torch.onnx.export(dynamo=True) and the ONNX Runtime vs PyTorch parity check
    triton_repo.py one model directory: config.pbtxt (GPU, onnxruntime), configs/cpu.pbtxt (python backend),
                   <version>/model.onnx + model.py, model card (JSON + Markdown)
    run.py         export_run(): a training run's checkpoint -> every servable model of its family

The command line is ``mri-train export`` (and ``make export``).
"""

from .spec import ServableModel, TensorSpec

__all__ = ["ServableModel", "TensorSpec"]
