"""Configuration of the DICOM node: one YAML (or TOML) file -> validated, frozen dataclasses.

The file is read by the project's one config loader (:func:`mrcore.config.read_config_file`, YAML or TOML)
and every mistake is its :class:`~mrcore.config.ConfigError`; this module adds the node's own checks (AE
titles, ports, TLS files, routes and the destinations they name, the DICOMweb listener).

Every error names the key path and what was expected, e.g.
``routes[1].task: expected 'reconstruction' or 'synthesis', got 'recon'``. See ``configs/dicom_node.yaml``
for a commented example and ``docs/dicom_node.md`` for the meaning of each key.
"""

from __future__ import annotations

import fnmatch
import os
import re
import ssl
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mrcore.config import ConfigError, read_config_file
from mrcore.data.base import CONTRASTS
from mrcore.durable import Permissions
from serving.quality import QualitySettings

if TYPE_CHECKING:
    from serving.api.settings import AuthSettings

__all__ = ["ConfigError", "Destination", "DicomWebListener", "NodeConfig", "Peer", "RetryPolicy", "Route",
           "TLSConfig", "WebAuth", "WebDestination", "load_config"]

TASKS = ("reconstruction", "synthesis")
_AE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # printable, no backslash, 1..16 characters


def _ae(path: str, value) -> str:
    if not isinstance(value, str) or not _AE_RE.match(value) or not value.strip():
        raise ConfigError(f"{path}: expected an AE title (1-16 printable characters, no backslash), got {value!r}")
    return value.strip()


def _num(path: str, value, *, minimum: float = 0.0, integer: bool = False):
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value >= minimum
    if integer:
        ok = ok and float(value).is_integer()
    if not ok:
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"{path}: expected {kind} >= {minimum}, got {value!r}")
    return int(value) if integer else float(value)


def _port(path: str, value) -> int:
    p = _num(path, value, minimum=0, integer=True)
    if p > 65535:
        raise ConfigError(f"{path}: expected a TCP port 0-65535, got {value!r}")
    return p


def _mapping(path: str, value, allowed: set[str], required: AbstractSet[str] = frozenset()) -> dict:
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__}")
    unknown = set(value) - allowed
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    missing = set(required) - set(value)
    if missing:
        raise ConfigError(f"{path}: missing required key(s) {sorted(missing)}")
    return value


def _str(path: str, value, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str) or (not allow_empty and not value.strip()):
        raise ConfigError(f"{path}: expected a non-empty string, got {value!r}")
    return value


@dataclass(frozen=True)
class TLSConfig:
    """TLS for the listener (server side) or for a destination (client side); PEM files."""

    certificate: Path | None = None
    private_key: Path | None = None
    ca_certificates: Path | None = None
    require_client_certificate: bool = False
    verify_server: bool = True

    @classmethod
    def parse(cls, path: str, value, *, server: bool, base: Path) -> TLSConfig | None:
        if value in (None, False):
            return None
        keys = {"certificate", "private_key", "ca_certificates", "require_client_certificate", "verify_server"}
        v = _mapping(path, value, keys, {"certificate", "private_key"} if server else set())
        files = {}
        for k in ("certificate", "private_key", "ca_certificates"):
            if v.get(k) is not None:
                p = Path(_str(f"{path}.{k}", v[k]))
                p = p if p.is_absolute() else base / p
                if not p.is_file():
                    raise ConfigError(f"{path}.{k}: file {p} does not exist")
                files[k] = p
        if ("certificate" in files) != ("private_key" in files):
            raise ConfigError(f"{path}: certificate and private_key go together")
        flags: dict[str, bool] = {}
        for k in ("require_client_certificate", "verify_server"):
            if k in v:
                if not isinstance(v[k], bool):
                    raise ConfigError(f"{path}.{k}: expected true or false, got {v[k]!r}")
                flags[k] = v[k]
        if flags.get("require_client_certificate") and "ca_certificates" not in files:
            raise ConfigError(f"{path}: require_client_certificate needs ca_certificates")
        return cls(**files, **flags)  # type: ignore[arg-type]  # files: the Path fields, flags: the bool fields

    def server_context(self):
        """``ssl.SSLContext`` for the listener."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(self.certificate), str(self.private_key))
        if self.ca_certificates:
            ctx.load_verify_locations(str(self.ca_certificates))
        ctx.verify_mode = ssl.CERT_REQUIRED if self.require_client_certificate else ssl.CERT_NONE
        return ctx

    def client_context(self):
        """``ssl.SSLContext`` for a destination."""
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.ca_certificates:
            ctx.load_verify_locations(str(self.ca_certificates))
        if not self.verify_server:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.certificate:
            ctx.load_cert_chain(str(self.certificate), str(self.private_key))
        return ctx


@dataclass(frozen=True)
class Peer:
    """A calling AE title allowed to associate, optionally only from some hosts (IP addresses)."""

    ae_title: str
    hosts: tuple[str, ...] = ()

    def allows(self, ae_title: str, host: str) -> bool:
        return ae_title.strip() == self.ae_title and (not self.hosts or host in self.hosts)


def _peers(path: str, value) -> tuple[Peer, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise ConfigError(f"{path}: expected a list of {{ae_title, hosts}} entries, got {type(value).__name__}")
    out = []
    for i, item in enumerate(value):
        if isinstance(item, str):
            item = {"ae_title": item}
        v = _mapping(f"{path}[{i}]", item, {"ae_title", "hosts"}, {"ae_title"})
        hosts = v.get("hosts") or []
        if not isinstance(hosts, list) or not all(isinstance(h, str) and h for h in hosts):
            raise ConfigError(f"{path}[{i}].hosts: expected a list of IP addresses, got {hosts!r}")
        out.append(Peer(_ae(f"{path}[{i}].ae_title", v["ae_title"]), tuple(hosts)))
    return tuple(out)


@dataclass(frozen=True)
class Destination:
    """A C-STORE SCP the derived series goes to."""

    name: str
    ae_title: str
    host: str
    port: int
    calling_ae_title: str | None = None
    tls: TLSConfig | None = None

    def describe(self) -> str:
        return f"{self.name}({self.ae_title}@{self.host}:{self.port})"


@dataclass(frozen=True)
class WebAuth:
    """Credentials for a DICOMweb destination, read from a file or an environment variable at each attempt
    (the secret is never part of the configuration object, its repr or a log line).

    ``kind`` is ``bearer`` (``Authorization: Bearer <token>``) or ``basic`` (``username`` + password).
    """

    kind: str
    username: str | None = None
    secret_file: Path | None = None
    secret_env: str | None = None

    def secret(self) -> str:
        """The token or password (``ValueError`` if its file or variable is missing or empty)."""
        if self.secret_file is not None:
            value = self.secret_file.read_text().strip() if self.secret_file.is_file() else ""
            where = f"file {self.secret_file}"
        else:
            value = os.environ.get(str(self.secret_env), "").strip()
            where = f"environment variable {self.secret_env}"
        if not value:
            raise ValueError(f"the {'token' if self.kind == 'bearer' else 'password'} ({where}) is missing or empty")
        return value.splitlines()[0].strip()

    @classmethod
    def parse(cls, path: str, value, *, base: Path) -> WebAuth | None:
        if value is None:
            return None
        keys = {"token_file", "token_env", "username", "password_file", "password_env"}
        v = _mapping(path, value, keys)
        token = [k for k in ("token_file", "token_env") if k in v]
        password = [k for k in ("password_file", "password_env") if k in v]
        if token and ("username" in v or password):
            raise ConfigError(f"{path}: either a bearer token (token_file or token_env) or username + password "
                              "(password_file or password_env), not both")
        if len(token) > 1 or len(password) > 1:
            raise ConfigError(f"{path}: give one of {token or password}, not both")
        if not token and not ("username" in v and password):
            raise ConfigError(f"{path}: expected token_file or token_env (bearer), or username with password_file or "
                              f"password_env (basic); got keys {sorted(v)}")
        key = (token or password)[0]
        secret_file = secret_env = None
        if key.endswith("_file"):
            secret_file = Path(_str(f"{path}.{key}", v[key]))
            secret_file = secret_file if secret_file.is_absolute() else base / secret_file
            if not secret_file.is_file():
                raise ConfigError(f"{path}.{key}: file {secret_file} does not exist")
        else:
            secret_env = _str(f"{path}.{key}", v[key])
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", secret_env):
                raise ConfigError(f"{path}.{key}: expected an environment variable name, got {secret_env!r}")
        return cls(kind="bearer" if token else "basic",
                   username=_str(f"{path}.username", v["username"]) if "username" in v else None,
                   secret_file=secret_file, secret_env=secret_env)


@dataclass(frozen=True)
class WebDestination:
    """A DICOMweb server the derived series goes to by STOW-RS (``POST {url}/studies``)."""

    name: str
    url: str
    auth: WebAuth | None = None
    tls: TLSConfig | None = None
    kind: str = "dicomweb"

    def describe(self) -> str:
        return f"{self.name}(STOW-RS {self.url})"

    @classmethod
    def parse(cls, name: str, value, *, base: Path) -> WebDestination:
        p = f"destinations.{name}"
        v = _mapping(p, value, {"kind", "url", "auth", "tls"}, {"kind", "url"})
        url = _str(f"{p}.url", v["url"]).rstrip("/")
        if not re.fullmatch(r"https?://[^/\s]+(/[^\s]*)?", url):
            raise ConfigError(f"{p}.url: expected the DICOMweb service root, http(s)://host[:port][/path] "
                              f"(STOW-RS posts to <url>/studies), got {v['url']!r}")
        tls = TLSConfig.parse(f"{p}.tls", v.get("tls"), server=False, base=base)
        if tls is not None and not url.startswith("https://"):
            raise ConfigError(f"{p}.tls: TLS settings need an https:// url, got {url!r}")
        return cls(name=name, url=url, auth=WebAuth.parse(f"{p}.auth", v.get("auth"), base=base), tls=tls)


def _auth_settings(tokens: tuple[str, ...], tokens_file: Path | None) -> AuthSettings:
    """The REST API's token settings (its validation and its token file format); ConfigError names our keys."""
    from serving.api.settings import AuthSettings  # deferred: serving.api imports the REST app (~2.5 s)

    try:
        return AuthSettings(enabled=True, tokens=tokens, tokens_file=tokens_file)
    except ConfigError as e:  # "config key 'auth.tokens[i]' must be ..." -> "dicomweb.auth.tokens[i]: must be ..."
        m = re.fullmatch(r"config key '([^']+)' (.*)", str(e), re.S)
        raise ConfigError(f"dicomweb.{m[1]}: {m[2]}" if m else f"dicomweb.auth: {e}") from None


@dataclass(frozen=True)
class DicomWebListener:
    """The node's STOW-RS listener (``POST /studies``): an HTTP server inside the node process.

    Authentication has the REST API's shape and rules (:class:`serving.api.settings.AuthSettings`); the tokens
    of ``MRI_API_TOKENS`` / ``MRI_API_TOKENS_FILE`` are accepted too, so ``make run``'s one token serves both.
    ``max_body_bytes``: a larger body is answered 413 before it is stored.
    """

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 8081
    max_body_bytes: int = 512 * 2**20
    auth_enabled: bool = True
    tokens: tuple[str, ...] = ()
    tokens_file: Path | None = None
    tls: TLSConfig | None = None  # HTTPS (the listener's certificate; optionally client certificates)

    def token_digests(self) -> frozenset[str]:
        """``sha256:`` digests of the accepted tokens (config, ``MRI_API_TOKENS``, ``MRI_API_TOKENS_FILE``)."""
        env = [t.strip() for t in os.environ.get("MRI_API_TOKENS", "").split(",") if t.strip()]
        env_file = os.environ.get("MRI_API_TOKENS_FILE")
        auth = _auth_settings(self.tokens + tuple(env), self.tokens_file or (Path(env_file) if env_file else None))
        try:
            digests = auth.digests()
        except ConfigError as e:  # a tokens file that is missing or malformed
            raise ConfigError(f"dicomweb.auth: {e}") from None
        if not digests:
            raise ConfigError("dicomweb.auth: the DICOMweb listener is on with authentication but no token is "
                              "configured: set MRI_API_TOKENS or MRI_API_TOKENS_FILE (as for the REST API), "
                              "dicomweb.auth.tokens / tokens_file, or dicomweb.auth.enabled: false")
        return digests

    @classmethod
    def parse(cls, value, *, base: Path) -> DicomWebListener:
        if value is None:
            return cls()
        v = _mapping("dicomweb", value, {"enabled", "host", "port", "max_body_bytes", "auth", "tls"})
        enabled = v.get("enabled", True)
        if not isinstance(enabled, bool):
            raise ConfigError(f"dicomweb.enabled: expected true or false, got {enabled!r}")
        a = _mapping("dicomweb.auth", v.get("auth"), {"enabled", "tokens", "tokens_file"})
        if not isinstance(a.get("enabled", True), bool):
            raise ConfigError(f"dicomweb.auth.enabled: expected true or false, got {a['enabled']!r}")
        tokens = a.get("tokens") or []
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise ConfigError("dicomweb.auth.tokens: expected a list of tokens or sha256:<hex> digests")
        tokens_file = None
        if a.get("tokens_file"):
            tokens_file = Path(_str("dicomweb.auth.tokens_file", a["tokens_file"]))
            tokens_file = tokens_file if tokens_file.is_absolute() else base / tokens_file
        if tokens:
            _auth_settings(tuple(tokens), None)  # the format of each token, named by its key
        return cls(enabled=enabled, host=_str("dicomweb.host", v.get("host", cls.host)),
                   port=_port("dicomweb.port", v.get("port", cls.port)),
                   max_body_bytes=_num("dicomweb.max_body_bytes", v.get("max_body_bytes", cls.max_body_bytes),
                                       minimum=1, integer=True),
                   auth_enabled=a.get("enabled", True), tokens=tuple(tokens), tokens_file=tokens_file,
                   tls=TLSConfig.parse("dicomweb.tls", v.get("tls"), server=True, base=base))


@dataclass(frozen=True)
class Route:
    """What the node does with series sent to one called AE title.

    ``rules`` maps a DICOM keyword (``Modality``, ``SeriesDescription``...) or ``contrast`` to glob patterns
    (case-insensitive); an instance must match every key (any pattern of a key) to be accepted.
    """

    name: str
    called_ae_title: str
    task: str
    destinations: tuple[str, ...]
    model: str = "recon_unrolled"
    version: str | None = None       # pin a model version (reconstruction); None: the newest
    source: str | None = None
    target: str | None = None
    rules: dict[str, tuple[str, ...]] = field(default_factory=dict)
    series_description: str = "{description} {model}"
    series_number_offset: int = 1000
    allowed_peers: tuple[Peer, ...] | None = None

    @property
    def model_name(self) -> str:
        """The model this route calls (synthesis: ``synth_<source>_to_<target>`` lowercased)."""
        if self.task == "synthesis":
            return f"synth_{self.source}_to_{self.target}".lower()
        return self.model

    def mismatch(self, values: dict[str, str | None]) -> str | None:
        """``None`` when ``values`` (keyword -> value) satisfy every rule, else which rule failed."""
        for key, patterns in self.rules.items():
            value = values.get(key)
            if value is None or not any(fnmatch.fnmatchcase(str(value).lower(), p.lower()) for p in patterns):
                return f"{key}={value!r} does not match {list(patterns)}"
        return None


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential back-off: ``min(base * 2**(attempt-1), max)`` seconds after failed attempt ``attempt``."""

    max_attempts: int = 5
    base_seconds: float = 2.0
    max_seconds: float = 300.0
    workers: int = 1

    def delay(self, attempt: int) -> float:
        return float(min(self.base_seconds * 2 ** max(attempt - 1, 0), self.max_seconds))

    @classmethod
    def parse(cls, path: str, value, default: RetryPolicy) -> RetryPolicy:
        v = _mapping(path, value, {"max_attempts", "retry_base_seconds", "retry_max_seconds", "workers"})
        return cls(
            max_attempts=_num(f"{path}.max_attempts", v.get("max_attempts", default.max_attempts), minimum=1,
                              integer=True),
            base_seconds=_num(f"{path}.retry_base_seconds", v.get("retry_base_seconds", default.base_seconds)),
            max_seconds=_num(f"{path}.retry_max_seconds", v.get("retry_max_seconds", default.max_seconds)),
            workers=_num(f"{path}.workers", v.get("workers", default.workers), minimum=1, integer=True),
        )


@dataclass(frozen=True)
class NodeConfig:
    """The whole node configuration (see ``configs/dicom_node.yaml``)."""

    ae_title: str
    host: str
    port: int
    storage_dir: Path
    routes: tuple[Route, ...]
    destinations: dict[str, Destination | WebDestination]
    quiet_seconds: float = 5.0
    #: a series whose instances say how much it holds but that is still short is complete after this long quiet
    incomplete_timeout: float = 600.0
    #: modes of the spool, results, queue and audit log (0700/0600, or 2750/0640 with a group)
    storage: Permissions = Permissions()
    allowed_peers: tuple[Peer, ...] | None = None
    tls: TLSConfig | None = None
    inference_url: str = "127.0.0.1:8000"
    inference_protocol: str = "http"
    processing: RetryPolicy = RetryPolicy(max_attempts=5, base_seconds=2.0, max_seconds=120.0, workers=1)
    delivery: RetryPolicy = RetryPolicy(max_attempts=6, base_seconds=2.0, max_seconds=300.0, workers=2)
    network_timeout: float = 30.0
    keep_seconds: float = 86400.0
    audit_log: Path | None = None
    max_pdu: int = 0
    quality: QualitySettings = QualitySettings()  # the reconstruction self-check (serving.quality)
    dicomweb: DicomWebListener = DicomWebListener()  # STOW-RS in (dicom_node.dicomweb); off by default

    def routes_for(self, called_ae_title: str) -> tuple[Route, ...]:
        return tuple(r for r in self.routes if r.called_ae_title == called_ae_title.strip())

    def route(self, name: str) -> Route:
        for r in self.routes:
            if r.name == name:
                return r
        raise KeyError(f"no route named {name!r}")

    @property
    def db_path(self) -> Path:
        return self.storage_dir / "queue.sqlite"


_TOP = {"ae_title", "listen", "storage_dir", "storage_group", "quiet_seconds", "incomplete_timeout_seconds", "allowed_peers", "tls", "inference", "processing",
        "delivery", "network_timeout_seconds", "retention", "audit_log", "destinations", "routes", "max_pdu",
        "quality", "dicomweb"}
_ROUTE = {"name", "called_ae_title", "task", "model", "version", "source", "target", "rules", "destinations",
          "series_description", "series_number_offset", "allowed_peers"}


def _route(i: int, value, destinations: dict[str, Destination | WebDestination]) -> Route:
    path = f"routes[{i}]"
    v = _mapping(path, value, _ROUTE, {"called_ae_title", "task", "destinations"})
    called = _ae(f"{path}.called_ae_title", v["called_ae_title"])
    task = v["task"]
    if task not in TASKS:
        raise ConfigError(f"{path}.task: expected 'reconstruction' or 'synthesis', got {task!r}")
    dests = v["destinations"]
    if isinstance(dests, str):
        dests = [dests]
    if not isinstance(dests, list) or not dests:
        raise ConfigError(f"{path}.destinations: expected a non-empty list of destination names, got {dests!r}")
    for d in dests:
        if d not in destinations:
            raise ConfigError(f"{path}.destinations: unknown destination {d!r}; defined: {sorted(destinations)}")
    source = target = None
    if task == "synthesis":
        for k in ("source", "target"):
            if v.get(k) not in CONTRASTS:
                raise ConfigError(f"{path}.{k}: expected one of {', '.join(CONTRASTS)} for a synthesis route, "
                                  f"got {v.get(k)!r}")
        source, target = v["source"], v["target"]
    version = v.get("version")
    if version is not None:
        if task != "reconstruction":
            raise ConfigError(f"{path}.version: pins a reconstruction model's version; a {task} route takes none")
        if isinstance(version, bool) or not re.fullmatch(r"[1-9][0-9]{0,5}", str(version)):
            raise ConfigError(f"{path}.version: expected a model version number >= 1, got {version!r}")
        version = str(version)
    rules = {}
    for key, pat in _mapping(f"{path}.rules", v.get("rules"), set(v.get("rules") or {})).items():
        pats = [pat] if isinstance(pat, str) else pat
        if not isinstance(pats, list) or not pats or not all(isinstance(p, str) for p in pats):
            raise ConfigError(f"{path}.rules.{key}: expected a glob pattern or a list of them, got {pat!r}")
        if key != "contrast" and not re.match(r"^[A-Za-z][A-Za-z0-9]*$", str(key)):
            raise ConfigError(f"{path}.rules: {key!r} is neither a DICOM keyword nor 'contrast'")
        rules[str(key)] = tuple(pats)
    desc = v.get("series_description", "{description} {model}")
    try:
        desc.format(description="", model="", contrast="", task="")
    except (KeyError, IndexError, AttributeError) as e:
        raise ConfigError(f"{path}.series_description: unknown field {e} (allowed: {{description}}, {{model}}, "
                          "{contrast}, {task})") from None
    return Route(
        name=_str(f"{path}.name", v.get("name", called.lower())),
        called_ae_title=called,
        task=task,
        destinations=tuple(dests),
        model=_str(f"{path}.model", v.get("model", "recon_unrolled")),
        version=version,
        source=source,
        target=target,
        rules=rules,
        series_description=desc,
        series_number_offset=_num(f"{path}.series_number_offset", v.get("series_number_offset", 1000), integer=True),
        allowed_peers=_peers(f"{path}.allowed_peers", v.get("allowed_peers")),
    )


def parse_config(data: dict[str, Any], *, base: Path = Path(".")) -> NodeConfig:
    """Validate a parsed configuration mapping (relative paths are relative to ``base``)."""
    v = _mapping("config", data, _TOP, {"routes", "destinations", "storage_dir"})
    listen = _mapping("listen", v.get("listen"), {"host", "port"})
    dests: dict[str, Destination | WebDestination] = {}
    for name, d in _mapping("destinations", v["destinations"], set(v["destinations"] or {})).items():
        p = f"destinations.{name}"
        kind = d.get("kind", "dicom") if isinstance(d, dict) else "dicom"
        if kind == "dicomweb":
            dests[name] = WebDestination.parse(name, d, base=base)
            continue
        if kind != "dicom":
            raise ConfigError(f"{p}.kind: expected 'dicom' (C-STORE, the default) or 'dicomweb' (STOW-RS), "
                              f"got {kind!r}")
        dv = _mapping(p, {k: x for k, x in d.items() if k != "kind"}, {"ae_title", "host", "port",
                                                                       "calling_ae_title", "tls"},
                      {"ae_title", "host", "port"})
        dests[name] = Destination(
            name=name, ae_title=_ae(f"{p}.ae_title", dv["ae_title"]), host=_str(f"{p}.host", dv["host"]),
            port=_port(f"{p}.port", dv["port"]),
            calling_ae_title=_ae(f"{p}.calling_ae_title", dv["calling_ae_title"]) if dv.get("calling_ae_title")
            else None,
            tls=TLSConfig.parse(f"{p}.tls", dv.get("tls"), server=False, base=base))
    if not dests:
        raise ConfigError("destinations: define at least one destination")
    if not isinstance(v["routes"], list) or not v["routes"]:
        raise ConfigError("routes: expected a non-empty list of routes")
    routes = tuple(_route(i, r, dests) for i, r in enumerate(v["routes"]))
    names = [r.name for r in routes]
    if len(set(names)) != len(names):
        raise ConfigError(f"routes: route names must be unique, got {names}")
    inference = _mapping("inference", v.get("inference"), {"url", "protocol"})
    if inference.get("protocol", "http") not in ("http", "grpc"):
        raise ConfigError(f"inference.protocol: expected 'http' or 'grpc', got {inference['protocol']!r}")
    retention = _mapping("retention", v.get("retention"), {"keep_seconds"})
    storage = Path(_str("storage_dir", str(v["storage_dir"])))
    audit = v.get("audit_log")
    quiet = _num("quiet_seconds", v.get("quiet_seconds", 5.0))
    incomplete = _num("incomplete_timeout_seconds", v.get("incomplete_timeout_seconds", 600.0))
    if incomplete < quiet:
        raise ConfigError(f"incomplete_timeout_seconds: must be >= quiet_seconds ({quiet:g}), got {incomplete:g}")
    group = v.get("storage_group")
    try:
        permissions = Permissions(None if group is None else _str("storage_group", group))
    except ValueError as e:
        raise ConfigError(f"storage_group: {e}") from None
    return NodeConfig(
        ae_title=_ae("ae_title", v.get("ae_title", "MRI_NODE")),
        host=_str("listen.host", listen.get("host", "127.0.0.1")),
        port=_port("listen.port", listen.get("port", 11112)),
        storage_dir=storage if storage.is_absolute() else base / storage,
        routes=routes,
        destinations=dests,
        quiet_seconds=quiet,
        incomplete_timeout=incomplete,
        storage=permissions,
        allowed_peers=_peers("allowed_peers", v.get("allowed_peers")),
        tls=TLSConfig.parse("tls", v.get("tls"), server=True, base=base),
        inference_url=_str("inference.url", inference.get("url", "127.0.0.1:8000")),
        inference_protocol=inference.get("protocol", "http"),
        processing=RetryPolicy.parse("processing", v.get("processing"), NodeConfig.processing),
        delivery=RetryPolicy.parse("delivery", v.get("delivery"), NodeConfig.delivery),
        network_timeout=_num("network_timeout_seconds", v.get("network_timeout_seconds", 30.0), minimum=0.1),
        keep_seconds=_num("retention.keep_seconds", retention.get("keep_seconds", 86400.0)),
        audit_log=(Path(audit) if Path(audit).is_absolute() else base / audit) if audit else None,
        max_pdu=_num("max_pdu", v.get("max_pdu", 0), integer=True),
        quality=QualitySettings.parse(v.get("quality")),
        dicomweb=DicomWebListener.parse(v.get("dicomweb"), base=base),
    )


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> NodeConfig:
    """Read and validate a YAML (``.yaml``/``.yml``) or TOML (``.toml``) configuration file.

    Relative paths inside (storage_dir, TLS files, audit_log) are relative to the current directory.
    ``overrides`` replace top-level keys (used by tests and ``serve --port``).
    """
    data = read_config_file(Path(path))
    data.update(overrides or {})
    return parse_config(data)
