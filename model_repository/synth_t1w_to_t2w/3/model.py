"""Triton python-backend model that runs the ``model.onnx`` beside it with ONNX Runtime (CPU).

Copied verbatim into every model version directory by the exporter (``mri-train export``) and used by
the ``configs/cpu.pbtxt`` configuration: the stock NGC container serves the same ``model.onnx`` with
its onnxruntime backend (``config.pbtxt``), hosts without Docker or GPU serve it through this file.
Requests whose inputs have equal shapes (apart from the batch axis) are concatenated and run as one
batch, then split again.

Parameters (``parameters`` in the config): ``intra_op_threads`` (0 = ONNX Runtime's default),
``device`` (``cpu`` or ``cuda``; with ``cuda`` the model refuses to load when ONNX Runtime would fall
back to the CPU instead of failing loudly), ``EXECUTION_ENV_PATH`` (the environment holding
onnxruntime, read by Triton itself).
Imports only numpy, onnxruntime and Triton's ``triton_python_backend_utils``.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.name = config["name"]
        self.inputs = [i["name"] for i in config["input"]]
        self.outputs = [o["name"] for o in config["output"]]
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        if not os.path.isfile(path):
            raise pb_utils.TritonModelException(f"model {self.name!r}: {path} does not exist")
        opts = ort.SessionOptions()
        threads = int(params.get("intra_op_threads", "0") or 0)
        if threads:
            opts.intra_op_num_threads = threads
        device = params.get("device", "cpu") or "cpu"
        if device not in ("cpu", "cuda"):
            raise pb_utils.TritonModelException(f"model {self.name!r}: parameter device={device!r}; expected 'cpu' or 'cuda'")
        providers = ["CUDAExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(path, sess_options=opts, providers=providers)
        if device == "cuda" and "CUDAExecutionProvider" not in self.session.get_providers():
            raise pb_utils.TritonModelException(
                f"model {self.name!r}: device=cuda was configured but ONNX Runtime runs on {self.session.get_providers()} "
                f"(available: {ort.get_available_providers()}); install onnxruntime-gpu with a matching CUDA/cuDNN "
                "or configure device=cpu")
        onnx_inputs = [i.name for i in self.session.get_inputs()]
        onnx_outputs = [o.name for o in self.session.get_outputs()]
        if onnx_inputs != self.inputs or onnx_outputs != self.outputs:
            raise pb_utils.TritonModelException(
                f"model {self.name!r}: config inputs/outputs {self.inputs}/{self.outputs} do not match "
                f"model.onnx {onnx_inputs}/{onnx_outputs}")

    def execute(self, requests):
        responses = [None] * len(requests)
        groups = {}
        arrays = []
        for n, request in enumerate(requests):
            try:
                feed = {name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self.inputs}
            except Exception as exc:  # noqa: BLE001 - a missing input: answer this request, keep the others
                responses[n] = pb_utils.InferenceResponse(error=pb_utils.TritonError(f"bad request: {exc}"))
                continue
            arrays.append(feed)
            key = tuple(feed[name].shape[1:] for name in self.inputs)
            groups.setdefault(key, []).append((n, feed))
        for members in groups.values():
            try:
                batch = {name: np.concatenate([f[name] for _, f in members]) for name in self.inputs}
                outs = self.session.run(self.outputs, batch)
                start = 0
                for n, feed in members:
                    size = feed[self.inputs[0]].shape[0]
                    tensors = [pb_utils.Tensor(name, np.ascontiguousarray(out[start:start + size]))
                               for name, out in zip(self.outputs, outs)]
                    responses[n] = pb_utils.InferenceResponse(output_tensors=tensors)
                    start += size
            except Exception as exc:  # noqa: BLE001 - ONNX Runtime rejected the shapes or values: an error per request
                for n, _ in members:
                    responses[n] = pb_utils.InferenceResponse(error=pb_utils.TritonError(f"inference failed: {exc}"))
        return responses
