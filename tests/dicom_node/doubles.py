"""TEST DOUBLE inference backend (no Triton) for the node's queue, fault, TLS and load tests.

NOT a model and never used in production: the production processor is
``dicom_node.processing.make_processor`` around ``serving.client.TritonClient`` (tested against a real
tritonserver in ``test_triton_e2e.py``). The double keeps everything else real: the node decodes,
validates, builds the derived series and delivers exactly as in production
(:class:`dicom_node.processing.InferenceProcessor` wraps it).

* ``reconstruct``: zero-filled root-sum-of-squares ``sqrt(sum_c |ifft2c(k_c)|^2)`` (mrcore's FFT).
* ``synthesize``: ``1000 - images / 4`` (an arbitrary, easily checked mapping).
* ``DICOM_NODE_TEST_UNAVAILABLE=<file>``: while that file exists, every call raises ``TransientError``
  (what an unreachable inference server looks like to the worker).
* ``DICOM_NODE_TEST_DELAY=<seconds>``: sleep that long in each call (a slow model).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from dicom_node.processing import InferenceProcessor, TransientError
from mrcore.fft import ifft2c


def expected_recon(kspace: np.ndarray) -> np.ndarray:
    return np.sqrt((np.abs(ifft2c(kspace)) ** 2).sum(axis=1)).astype(np.float32)


def expected_synthesis(images: np.ndarray) -> np.ndarray:
    return (1000.0 - np.asarray(images, np.float32) / 4).astype(np.float32)


class DoubleBackend:
    """TEST DOUBLE of the serving client's inference calls (see the module docstring)."""

    def _gate(self) -> None:
        flag = os.environ.get("DICOM_NODE_TEST_UNAVAILABLE")
        if flag and Path(flag).exists():
            raise TransientError("test double: inference unavailable")
        delay = float(os.environ.get("DICOM_NODE_TEST_DELAY", "0") or 0)
        if delay:
            time.sleep(delay)

    def reconstruct(self, kspace, mask=None, model="recon_unrolled", version=""):
        self._gate()
        return expected_recon(kspace)

    def synthesize(self, images, source, target):
        self._gate()
        return expected_synthesis(images)

    def model_info(self, name):
        return {"name": name, "versions": ["0-test-double"]}


def processor():
    """Processor factory for ``dicom_node serve --processor tests.dicom_node.doubles:processor``."""
    return InferenceProcessor(DoubleBackend())
