# Production image for a GPU host: the stock NGC Triton container (onnxruntime backend, CUDA) with this
# project installed beside it. The model repository's default `config.pbtxt` files select the
# onnxruntime backend on KIND_GPU; the CPU configs (configs/cpu.pbtxt) are only for hosts without a GPU.
#
#   docker build -t mri-service .
#   docker run --gpus all -p 8000:8000 -p 8001:8001 -p 8080:8080 -p 11112:11112 mri-service
#
# (Not buildable on the development machines, which have no Docker engine.)
ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:24.10-py3
FROM ${TRITON_IMAGE}

ENV DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
RUN apt-get update && apt-get install -y --no-install-recommends dcmtk python3-venv \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/mri-service
COPY pyproject.toml requirements.lock README.md ./
COPY mrcore mrcore
COPY training training
COPY serving serving
COPY dicom_node dicom_node
COPY model_repository model_repository
COPY configs configs
COPY deploy deploy

# torch is only needed for training; the serving image keeps it pinned to the CPU wheel all the same.
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu -r requirements.lock \
    && /opt/venv/bin/pip install --no-cache-dir --no-deps -e .
ENV PATH=/opt/venv/bin:$PATH

EXPOSE 8000 8001 8002 8080 11112
# The whole service: the container's tritonserver with its onnxruntime backend serving the GPU configs
# (config.pbtxt, KIND_GPU) of the shipped repository, the REST API on 8080 and the DICOM node on 11112.
# Give the API its tokens: docker run -e MRI_API_TOKENS=... (or mount a file and set MRI_API_TOKENS_FILE).
# No embedded Orthanc here (--no-orthanc): results go to the hospital's PACS named in the node's configuration.
CMD ["python", "-m", "serving.stack", "--gpu", "--no-orthanc", "--host", "0.0.0.0", \
     "--triton-binary", "/opt/tritonserver/bin/tritonserver", "--triton-backends", "/opt/tritonserver/backends"]
