"""The one module that talks to Triton (binary tensors over HTTP or gRPC; never JSON tensors).

Used by both the REST API and the DICOM node (one instance may be shared by threads: each thread gets
its own connection)::

    client = TritonClient("127.0.0.1:8000")                       # or TritonClient("127.0.0.1:8001", "grpc")
    image = client.reconstruct(kspace)                            # complex64 [S, C, ky, kx] -> float32 [S, ky, kx]
    t2 = client.synthesize(t1_volume, source="T1w", target="T2w") # float32 [S, H, W] -> float32 [S, H, W]

Triton has no complex dtype: k-space travels as float32 ``[..., 2]`` (real, imaginary). Volumes are
sent in chunks of at most the model's ``max_batch_size`` slices.

Errors: :class:`InferenceUnavailable` when Triton cannot be reached or the model is not ready (retry
later); :class:`InferenceError` for a request Triton or the model rejects (do not retry);
:class:`UnknownModel` (an InferenceError) for a model the repository does not hold. Input validation
errors are ``ValueError``: the k-space / mask contract's :class:`~mrcore.contract.ContractError` (the same verdict
as REST and the DICOM node give), and the shape checks of ``synthesize``.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import numpy as np
import tritonclient.grpc
import tritonclient.http
from google.protobuf.json_format import MessageToDict
from tritonclient.utils import InferenceServerException

from mrcore.coils import compress_coils
from mrcore.contract import check_kspace, check_mask, mask_per_slice
from mrcore.intensity import robust_scale
from mrcore.masks import infer_mask
from mrcore.quality import QualityInputError, SliceEstimate, holdout_split, slice_quality
from serving.quality import QualitySettings, SliceQuality, verdict

log = logging.getLogger(__name__)

RECON_MODEL = "recon_unrolled"


class InferenceUnavailable(RuntimeError):
    """Triton is down, unreachable or the model is not ready: the same request may succeed later."""


class InferenceError(RuntimeError):
    """Triton or the model rejected the request (bad shapes, failure inside the model): do not retry."""


class UnknownModel(InferenceError):
    """The model repository holds no such model."""


def synthesis_model_name(source: str, target: str) -> str:
    """Triton model name of a synthesis direction: ``("T1w", "T2w") -> "synth_t1w_to_t2w"``."""
    return f"synth_{source.lower()}_to_{target.lower()}"


@dataclass(frozen=True)
class ModelStatus:
    """A model in Triton's repository index."""

    name: str
    version: str
    state: str
    reason: str = ""


def _mask_volume(mask: np.ndarray | None, kspace: np.ndarray) -> np.ndarray:
    """float32 [S, ky, kx] for ``kspace`` [S, C, ky, kx]: the checked mask (any shape the contract accepts)
    repeated over slices, or, without one, the non-zero samples of each slice."""
    if mask is None:
        return np.stack([infer_mask(k) for k in kspace])
    return mask_per_slice(check_mask(np.asarray(mask), kspace.shape), kspace.shape[0])


class TritonClient:
    """Inference through a running Triton server.

    Parameters
    ----------
    url : "host:port" of Triton's HTTP (default 8000) or gRPC (8001) endpoint
    protocol : "http" or "grpc"
    timeout_s : network timeout per request
    """

    def __init__(self, url: str = "127.0.0.1:8000", protocol: str = "http", timeout_s: float = 120.0) -> None:
        if protocol not in ("http", "grpc"):
            raise ValueError(f"protocol must be 'http' or 'grpc', got {protocol!r}")
        self.url, self.protocol, self.timeout_s = url, protocol, float(timeout_s)
        self._tc = tritonclient.http if protocol == "http" else tritonclient.grpc
        self._local = threading.local()   # tritonclient's HTTP client must not cross threads (gevent)
        self._all: list = []
        self._lock = threading.Lock()
        self._max_batch: dict[str, int] = {}
        self._parameters: dict[str, dict[str, str]] = {}

    @property
    def _client(self):
        """This thread's tritonclient connection (created on first use)."""
        client = getattr(self._local, "client", None)
        if client is None:
            if self.protocol == "http":
                client = self._tc.InferenceServerClient(self.url, connection_timeout=min(10.0, self.timeout_s),
                                                        network_timeout=self.timeout_s)
            else:
                client = self._tc.InferenceServerClient(self.url)
            self._local.client = client
            with self._lock:
                self._all.append(client)
        return client

    def close(self) -> None:
        """Close every thread's connection."""
        with self._lock:
            clients, self._all = self._all, []
        for client in clients:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - closing from another thread than the one that used it
                pass
        self._local = threading.local()

    def __enter__(self) -> TritonClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- health and models --------------------------------------------------------------------
    def _call(self, what: str, fn, *args, **kwargs):
        """Run a tritonclient call, mapping its failures to InferenceUnavailable / InferenceError."""
        try:
            return fn(*args, **kwargs)
        except InferenceServerException as exc:
            msg = exc.message() or str(exc)
            status = str(exc.status() or "")
            low = msg.lower()
            if "unknown model" in low or "not found" in low:
                raise UnknownModel(f"{what}: {msg}") from None
            if "unavailable" in low or "not ready" in low or status in ("503", "StatusCode.UNAVAILABLE"):
                raise InferenceUnavailable(f"{what}: Triton at {self.url}: {msg}") from None
            raise InferenceError(f"{what}: {msg}") from None
        except (ConnectionError, OSError, TimeoutError) as exc:
            raise InferenceUnavailable(f"{what}: Triton at {self.url} is unreachable ({exc.__class__.__name__}: {exc})") from None
        except Exception as exc:  # gevent/grpc transport errors have library-specific types
            if exc.__class__.__module__.split(".")[0] in ("geventhttpclient", "gevent", "grpc", "socket"):
                raise InferenceUnavailable(f"{what}: Triton at {self.url} is unreachable ({exc.__class__.__name__}: {exc})") from None
            raise

    def is_ready(self, models: tuple[str, ...] = ()) -> bool:
        """True when the server (and every named model) is ready; False when unreachable."""
        try:
            return bool(self._call("ready", self._client.is_server_ready)) and all(
                self._call("ready", self._client.is_model_ready, m) for m in models)
        except (InferenceUnavailable, InferenceError):
            return False

    def models(self) -> list[ModelStatus]:
        """Every model in Triton's repository index with its state (READY, UNAVAILABLE, ...)."""
        index = self._call("repository index", self._client.get_model_repository_index)
        if self.protocol == "grpc":
            index = [{"name": m.name, "version": m.version, "state": m.state, "reason": m.reason} for m in index.models]
        return [ModelStatus(m["name"], str(m.get("version", "")), m.get("state", ""), m.get("reason", "")) for m in index]

    def model_info(self, name: str) -> dict:
        """``{"name", "versions", "inputs", "outputs", "max_batch_size"}`` of a loaded model."""
        meta = self._call(f"model {name!r}", self._client.get_model_metadata, name)
        cfg = self._call(f"model {name!r}", self._client.get_model_config, name)
        if self.protocol == "grpc":
            meta, cfg = MessageToDict(meta, preserving_proto_field_name=True), MessageToDict(cfg.config, preserving_proto_field_name=True)
        return {"name": meta["name"], "versions": list(meta.get("versions", [])),
                "inputs": meta.get("inputs", []), "outputs": meta.get("outputs", []),
                "max_batch_size": int(cfg.get("max_batch_size", 0))}

    def max_batch_size(self, model: str) -> int:
        if model not in self._max_batch:
            self._max_batch[model] = max(1, self.model_info(model)["max_batch_size"])
        return self._max_batch[model]

    def model_parameters(self, model: str) -> dict[str, str]:
        """The ``parameters`` of ``model``'s Triton configuration as strings (cached per client)."""
        if model not in self._parameters:
            cfg = self._call(f"model {model!r}", self._client.get_model_config, model)
            if self.protocol == "grpc":
                cfg = MessageToDict(cfg.config, preserving_proto_field_name=True)
            params = cfg.get("parameters", {}) or {}
            self._parameters[model] = {k: str(v.get("string_value", "")) for k, v in params.items()}
        return self._parameters[model]

    def virtual_coils(self, model: str) -> int | None:
        """How many virtual coils ``model`` takes (its config parameter ``virtual_coils``), None: any count."""
        value = self.model_parameters(model).get("virtual_coils", "")
        return int(value) if value.isdigit() and int(value) > 0 else None

    # -- inference ----------------------------------------------------------------------------
    def infer(self, model: str, inputs: dict[str, np.ndarray], outputs: list[str],
              version: str = "") -> dict[str, np.ndarray]:
        """Run ``model`` on ``inputs`` (each with the same leading batch axis), in chunks of at most its
        ``max_batch_size``; returns the named outputs concatenated along the batch axis. ``version``: a version
        number to pin ("": the one Triton's version policy picks, the newest)."""
        sizes = {v.shape[0] for v in inputs.values()}
        if len(sizes) != 1:
            raise ValueError(f"inputs of {model!r} must share the batch axis, got {({k: v.shape for k, v in inputs.items()})}")
        n = sizes.pop()
        step = self.max_batch_size(model)
        chunks: dict[str, list[np.ndarray]] = {o: [] for o in outputs}
        for start in range(0, n, step):
            tensors = []
            for name, value in inputs.items():
                part = np.ascontiguousarray(value[start:start + step], dtype=np.float32)
                t = self._tc.InferInput(name, list(part.shape), "FP32")
                if self.protocol == "http":
                    t.set_data_from_numpy(part, binary_data=True)
                else:
                    t.set_data_from_numpy(part)
                tensors.append(t)
            what = f"model {model!r}" + (f" version {version}" if version else "")
            if self.protocol == "http":
                requested = [self._tc.InferRequestedOutput(o, binary_data=True) for o in outputs]
                result = self._call(what, self._client.infer, model, tensors, model_version=version,
                                    outputs=requested)
            else:
                requested = [self._tc.InferRequestedOutput(o) for o in outputs]
                result = self._call(what, self._client.infer, model, tensors, model_version=version,
                                    outputs=requested, client_timeout=self.timeout_s)
            for o in outputs:
                chunks[o].append(result.as_numpy(o))
        return {o: np.concatenate(v) for o, v in chunks.items()}

    def reconstruct(self, kspace: np.ndarray, mask: np.ndarray | None = None, model: str = RECON_MODEL,
                    complex_output: bool = False, version: str = "") -> np.ndarray:
        """Reconstruct undersampled multi-coil k-space.

        Parameters
        ----------
        kspace : complex64 [slices, coils, ky, kx] or [coils, ky, kx] (centred orthonormal FFT convention)
        mask : 0/1 [ky, kx], [slices, ky, kx], a line mask [ky] (or [kx]), or None (inferred: samples that are
            non-zero); both checked by :mod:`mrcore.contract` (ContractError, a ValueError)
        model : Triton model name
        complex_output : return the complex image instead of the magnitude
        version : model version to pin ("" = the newest)

        A model whose configuration names ``virtual_coils`` gets more coils than that compressed to that many
        virtual coils first (SVD coil compression per slice, :func:`mrcore.coils.compress_coils`), as it was
        trained; the result is in the input's scale either way.

        Returns
        -------
        float32 [slices, ky, kx] magnitude (or complex64 with ``complex_output``), in the input's scale.
        """
        k = check_kspace(np.asarray(kspace))
        m = _mask_volume(mask, k)
        virtual = self.virtual_coils(model)
        if virtual is not None and k.shape[1] > virtual:
            k = np.stack([compress_coils(ks, virtual, ms) for ks, ms in zip(k, m)])
        out = self.infer(model, {"kspace": np.stack([k.real, k.imag], axis=-1).astype(np.float32), "mask": m},
                         ["image" if complex_output else "magnitude"], version=version)
        if complex_output:
            img = out["image"]
            return (img[..., 0] + 1j * img[..., 1]).astype(np.complex64)
        return out["magnitude"]

    def reconstruct_checked(self, kspace: np.ndarray, mask: np.ndarray | None = None, model: str = RECON_MODEL,
                            version: str = "", settings: QualitySettings | None = None, first_slice: int = 0,
                            strict: bool = True) -> tuple[np.ndarray, list[SliceQuality]]:
        """:meth:`reconstruct` (magnitude) and each slice's self-check (:mod:`mrcore.quality`): one more Triton call
        per chunk of slices, on the same (coil-compressed) k-space without the held-out lines.

        ``first_slice`` numbers the slices (the held-out lines are seeded by ``[settings.seed, slice number]``).
        A holdout fraction that leaves fewer lines than the model needs raises
        :class:`mrcore.quality.QualityInputError` (key ``holdout_fraction``) when ``strict``, else that slice's
        estimate is reported unavailable. Returns ``(float32 [slices, ky, kx], [SliceQuality per slice])``.
        """
        settings = settings or QualitySettings()
        k = check_kspace(np.asarray(kspace))
        m = _mask_volume(mask, k)
        virtual = self.virtual_coils(model)
        if virtual is not None and k.shape[1] > virtual:
            k = np.stack([compress_coils(ks, virtual, ms) for ks, ms in zip(k, m)])
        splits: list = []
        reasons: list[str] = []
        for i, ms in enumerate(m):
            try:
                splits.append(holdout_split(ms, settings.holdout_fraction, settings.seed, first_slice + i))
                reasons.append(splits[-1].reason)
            except QualityInputError as exc:
                if strict:
                    raise
                splits.append(None)
                reasons.append(str(exc))
        packed = np.stack([k.real, k.imag], axis=-1).astype(np.float32)
        answer = self.infer(model, {"kspace": packed, "mask": m}, ["magnitude"], version=version)["magnitude"]
        seen = np.stack([s.seen if s is not None else ms for s, ms in zip(splits, m)])
        todo = [i for i, s in enumerate(splits) if s is not None and s.available]
        quality: list[SliceQuality] = []
        images = {}
        if todo:
            held = self.infer(model, {"kspace": packed[todo] * seen[todo][:, None, :, :, None], "mask": seen[todo]},
                              ["image"], version=version)["image"]
            images = {i: h[..., 0] + 1j * h[..., 1] for i, h in zip(todo, held)}
        for i, split in enumerate(splits):
            if i in images and split is not None:
                quality.append(verdict(first_slice + i, slice_quality(k[i], images[i], split), settings))
            else:
                quality.append(verdict(first_slice + i, SliceEstimate(None, None), settings,
                                       reasons[i] or "unavailable"))
        return answer, quality

    def synthesize(self, images: np.ndarray, source: str, target: str, model: str | None = None,
                   scale: float | None = None) -> np.ndarray:
        """Synthesize the ``target`` contrast from ``source``-contrast magnitude images.

        The series is divided by its robust intensity scale (:func:`mrcore.intensity.robust_scale`: the
        median of its foreground, the same normalisation as in training) before it is sent; the model
        works in those normalised units.

        images : float [slices, H, W] (or [H, W]), any intensity scale; H, W >= 16.
        scale : the whole series' robust scale when ``images`` is a chunk of a longer series (None: computed
            from ``images``); :class:`mrcore.intensity.NormalisationError` (a ValueError) when the series
            has too little foreground to normalise.
        Returns float32 [slices, H, W] in normalised target units (see the model card).
        """
        x = np.asarray(images)
        if x.ndim == 2:
            x = x[None]
        if x.ndim != 3 or 0 in x.shape or np.iscomplexobj(x):
            raise ValueError(f"images must be real [slices, H, W] or [H, W], got {x.dtype} {list(x.shape)}")
        if min(x.shape[-2:]) < 16:
            raise ValueError(f"images must be at least 16x16, got {x.shape[-2]}x{x.shape[-1]}")
        if not np.isfinite(x).all():
            raise ValueError("images hold NaN or Inf values")
        if scale is None:
            scale = robust_scale(x)
        elif not (np.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be finite and > 0, got {scale!r}")
        name = model or synthesis_model_name(source, target)
        out = self.infer(name, {"image": (x.astype(np.float32) / np.float32(scale))[:, None]}, ["synthesized"])
        return out["synthesized"][:, 0]
