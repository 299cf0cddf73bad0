"""Settings of the REST API: ``configs/serving.yaml`` + environment variables + ``--set key=value``.

Precedence (last wins): defaults, the YAML file, environment variables, command-line overrides.

Environment variables
---------------------
``MRI_API_TOKENS``          comma-separated bearer tokens (raw, or ``sha256:<64 hex>`` of the token)
``MRI_API_TOKENS_FILE``     file with one token (or ``sha256:`` digest) per line; ``#`` comments
``MRI_API_TRITON_URL``      ``host:port`` of Triton (HTTP 8000 or gRPC 8001)
``MRI_API_TRITON_PROTOCOL`` ``http`` or ``grpc``
``MRI_API_JOBS_DIR``        job directory
``MRI_API_CORS_ORIGINS``    comma-separated allowed origins (empty: CORS off)
``MRI_API_LOG_LEVEL``       DEBUG, INFO, WARNING, ERROR

Every error is a :class:`mrcore.config.ConfigError` naming the key and what was expected.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from mrcore.config import ConfigError, apply_overrides, build, read_config_file
from mrcore.durable import Permissions
from serving.quality import QualitySettings

__all__ = ["ApiSettings", "AuthSettings", "ConfigError", "CorsSettings", "JobSettings", "LimitSettings",
           "LogSettings", "TritonEndpoint", "token_digest"]

MiB = 1024 * 1024
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_TOKEN = re.compile(r"^[A-Za-z0-9._~+/=-]{16,512}$")  # RFC 6750 b64token, at least 16 characters


def token_digest(token: str) -> str:
    """``"sha256:<hex>"`` of a bearer token: what the API keeps in memory and what config files may hold."""
    return "sha256:" + hashlib.sha256(token.encode("utf-8")).hexdigest()


def _positive(key: str, value, *, minimum: float = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
        raise ConfigError(f"config key {key!r} must be a number >= {minimum}, got {value!r}")


@dataclass(frozen=True)
class TritonEndpoint:
    """Where Triton runs. ``model_repository`` (optional) is read for the model cards of ``GET /v1/models``."""

    url: str = "127.0.0.1:8000"
    protocol: Literal["http", "grpc"] = "http"
    timeout_s: float = 300.0
    model_repository: Path | None = Path("model_repository")

    def __post_init__(self) -> None:
        if not re.match(r"^[A-Za-z0-9.\-\[\]:]+:\d{1,5}$", self.url):
            raise ConfigError(f"config key 'triton.url' must be 'host:port' (no scheme), got {self.url!r}")
        _positive("triton.timeout_s", self.timeout_s, minimum=0.1)


@dataclass(frozen=True)
class AuthSettings:
    """Bearer tokens. Each entry of ``tokens`` is a token (>= 16 characters of ``A-Za-z0-9._~+/=-``) or its
    ``sha256:<hex>`` digest (:func:`token_digest`; keeps the secret out of the config file)."""

    enabled: bool = True
    tokens: tuple[str, ...] = ()
    tokens_file: Path | None = None

    def __post_init__(self) -> None:
        for i, t in enumerate(self.tokens):
            if not (_DIGEST.match(t) or _TOKEN.match(t)):
                raise ConfigError(f"config key 'auth.tokens[{i}]' must be a token of at least 16 characters "
                                  "[A-Za-z0-9._~+/=-] or 'sha256:<64 hex digits>' (value not shown)")

    def digests(self) -> frozenset[str]:
        """The accepted tokens as ``sha256:`` digests (tokens_file read here)."""
        entries = list(self.tokens)
        if self.tokens_file is not None:
            path = Path(self.tokens_file)
            if not path.is_file():
                raise ConfigError(f"config key 'auth.tokens_file': {str(path)!r} does not exist")
            for n, line in enumerate(path.read_text().splitlines(), 1):
                line = line.split("#", 1)[0].strip()
                if not line:
                    continue
                if not (_DIGEST.match(line) or _TOKEN.match(line)):
                    raise ConfigError(f"{path}:{n}: expected a token of at least 16 characters [A-Za-z0-9._~+/=-] "
                                      "or 'sha256:<64 hex digits>' (value not shown)")
                entries.append(line)
        return frozenset(t if t.startswith("sha256:") else token_digest(t) for t in entries)


@dataclass(frozen=True)
class LimitSettings:
    """Request limits. Bodies over the limit get 413 before they are read."""

    max_body_bytes: int = 256 * MiB          # synchronous requests
    max_job_body_bytes: int = 2048 * MiB     # job submissions (streamed to disk)
    sync_max_slices: int = 64                # more slices: 413, use job mode
    max_slices: int = 1024
    max_coils: int = 64
    max_matrix: int = 1024                   # largest ky, kx (or rows, columns)
    inference_concurrency: int = 2           # Triton calls in flight from this API process

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_job_body_bytes", "sync_max_slices", "max_slices", "max_coils",
                     "max_matrix", "inference_concurrency"):
            _positive(f"limits.{name}", getattr(self, name))
        if self.max_matrix < 16:
            raise ConfigError(f"config key 'limits.max_matrix' must be >= 16, got {self.max_matrix}")


@dataclass(frozen=True)
class JobSettings:
    """Job mode: one directory per job under ``directory`` (``state.json``, input, result)."""

    directory: Path = Path(".cache/api-jobs")
    workers: int = 1
    keep_seconds: float = 86400.0            # finished jobs (and their files) are removed after this
    max_queued: int = 16                     # submissions beyond this: 429
    chunk_slices: int = 8                    # slices per Triton call (progress is reported per chunk)
    #: job files hold patient data: dirs 0700 / files 0600, or 2750 / 0640 shared with this group
    group: str | None = None

    @property
    def permissions(self) -> Permissions:
        return Permissions(self.group)

    def __post_init__(self) -> None:
        try:
            Permissions(self.group)
        except ValueError as e:
            raise ConfigError(f"config key 'jobs.group': {e}") from None
        _positive("jobs.workers", self.workers)
        _positive("jobs.keep_seconds", self.keep_seconds, minimum=0)
        _positive("jobs.max_queued", self.max_queued)
        _positive("jobs.chunk_slices", self.chunk_slices)


@dataclass(frozen=True)
class CorsSettings:
    """CORS is off unless origins are listed (``["*"]`` allows any origin, without credentials)."""

    allow_origins: tuple[str, ...] = ()


@dataclass(frozen=True)
class LogSettings:
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "text"] = "json"


@dataclass(frozen=True)
class ApiSettings:
    """Everything the API needs; built by :meth:`load` (file + environment + overrides)."""

    triton: TritonEndpoint = field(default_factory=TritonEndpoint)
    auth: AuthSettings = field(default_factory=AuthSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    jobs: JobSettings = field(default_factory=JobSettings)
    cors: CorsSettings = field(default_factory=CorsSettings)
    logging: LogSettings = field(default_factory=LogSettings)
    quality: QualitySettings = field(default_factory=QualitySettings)  # reconstruction self-check (serving.quality)
    recon_model: str = "recon_unrolled"
    #: /health/ready is 200 only when Triton and each of these models are ready (and no model failed to load)
    required_models: tuple[str, ...] = ("recon_unrolled",)
    docs: bool = True                        # serve /docs, /redoc and /openapi.json

    def __post_init__(self) -> None:
        if not re.match(r"^[A-Za-z0-9_.-]{1,128}$", self.recon_model):
            raise ConfigError(f"config key 'recon_model' must be a Triton model name, got {self.recon_model!r}")

    @classmethod
    def load(cls, path: Path | None = None, overrides: Sequence[str] = (),
             environ: Mapping[str, str] | None = None) -> ApiSettings:
        """Defaults <- YAML ``path`` <- environment (``MRI_API_*``) <- ``overrides`` (``"limits.max_slices=64"``)."""
        data = read_config_file(Path(path)) if path is not None else {}
        env = os.environ if environ is None else environ
        for dotted, value in _env_values(env).items():  # strings as given (not parsed as YAML)
            section, key = dotted.split(".")
            if not isinstance(data.get(section, {}), dict):
                raise ConfigError(f"config key {section!r} must be a section (mapping)")
            data = {**data, section: {**data.get(section, {}), key: value}}
        data = apply_overrides(data, list(overrides))
        settings = build(cls, data)
        extra = [t.strip() for t in env.get("MRI_API_TOKENS", "").split(",") if t.strip()]
        for i, t in enumerate(extra):
            if not (_DIGEST.match(t) or _TOKEN.match(t)):
                raise ConfigError(f"MRI_API_TOKENS entry {i + 1} must be a token of at least 16 characters "
                                  "[A-Za-z0-9._~+/=-] or 'sha256:<64 hex digits>' (value not shown)")
        if extra:
            settings = replace(settings, auth=replace(settings.auth, tokens=settings.auth.tokens + tuple(extra)))
        if env.get("MRI_API_TOKENS_FILE"):
            settings = replace(settings, auth=replace(settings.auth, tokens_file=Path(env["MRI_API_TOKENS_FILE"])))
        settings.check()
        return settings

    def check(self) -> None:
        """Checks that need more than one key (or the file system)."""
        if self.auth.enabled and not self.auth.digests():
            raise ConfigError("authentication is on but no token is configured: set MRI_API_TOKENS (comma-separated), "
                              "MRI_API_TOKENS_FILE, or 'auth.tokens' in the config file (or 'auth.enabled: false' "
                              "on a closed test network only)")


def _env_values(env: Mapping[str, str]) -> dict:
    out: dict = {}
    for var, key in (("MRI_API_TRITON_URL", "triton.url"), ("MRI_API_TRITON_PROTOCOL", "triton.protocol"),
                     ("MRI_API_JOBS_DIR", "jobs.directory"), ("MRI_API_LOG_LEVEL", "logging.level")):
        if env.get(var):
            out[key] = env[var].strip()
    if "MRI_API_CORS_ORIGINS" in env:
        out["cors.allow_origins"] = [o.strip() for o in env["MRI_API_CORS_ORIGINS"].split(",") if o.strip()]
    return out
