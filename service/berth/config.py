"""The one typed settings model.

Sources, highest priority first: explicit overrides (CLI flags), ``BERTH_…`` environment
variables (nested keys joined by ``__``, e.g. ``BERTH_STORAGE__ROOT``), the YAML file given by
``--config``, then the defaults, which serve a local directory on 127.0.0.1:5000.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

# The settings `berth serve` resolved, handed to its uvicorn worker processes as JSON.
SETTINGS_ENV = "BERTH_INTERNAL_SETTINGS_JSON"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TLSSettings(_Section):
    cert_file: Path | None = Field(
        None, description="PEM certificate chain: `berth serve` terminates TLS itself when set."
    )
    key_file: Path | None = Field(None, description="PEM private key of the certificate.")
    reload_check_seconds: float = Field(
        10.0, gt=0, description="How often new connections look for changed cert/key files."
    )


class HTTPSettings(_Section):
    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(5000, ge=0, le=65535, description="TCP port to listen on.")
    workers: int = Field(
        0,
        ge=0,
        description="Number of uvicorn worker processes. 0: one per CPU the process may use "
        "(the container's CPU limit, else its CPU affinity).",
    )
    base_url: str | None = Field(
        None,
        description="Public URL of the registry, used for absolute Location headers. "
        "Unset: Location headers are relative paths.",
    )
    shutdown_timeout_seconds: float = Field(
        30.0,
        ge=0,
        description="Graceful shutdown: after SIGTERM the server stops accepting connections, "
        "`/readyz` answers 503, and requests in flight (uploads) get this long to finish before "
        "they are cancelled. Keep it below the pod's terminationGracePeriodSeconds.",
    )
    tls: TLSSettings = TLSSettings()


class FilesystemSettings(_Section):
    root: Path = Field(Path("./data"), description="Directory that holds the registry data.")


class S3Settings(_Section):
    bucket: str = Field("", description="Bucket name.")
    region: str = Field("us-east-1", description="Bucket region.")
    endpoint_url: str | None = Field(None, description="S3 endpoint (unset: AWS).")
    public_endpoint_url: str | None = Field(
        None,
        description="Endpoint used only to sign redirect URLs for clients (unset: endpoint_url). "
        "Never a subdomain of the registry host, so clients do not send it their credentials.",
    )
    root_directory: str = Field("", description="Key prefix inside the bucket.")
    path_style: bool = Field(True, description="Use path-style addressing.")
    storage_class: str | None = Field(None, description="Storage class for new objects.")
    sse: str | None = Field(None, description="Server-side encryption (AES256 or aws:kms).")
    sse_kms_key_id: str | None = Field(None, description="KMS key for aws:kms encryption.")
    part_size: int = Field(
        8 * 1024 * 1024,
        ge=5 * 1024 * 1024,
        le=5 * 1024 * 1024 * 1024,
        description="Multipart upload part size (bytes); every part but the last has this size. "
        "A part a request's Content-Length covers is streamed to the store as it arrives; "
        "otherwise one part is buffered per upload in progress, plus the parts uploading in the "
        "background (see part_buffer_budget).",
    )
    parts_in_flight: int = Field(
        2,
        ge=1,
        le=16,
        description="Parts of one upload sent to the store at once while the upload keeps "
        "receiving the next part (pipelining).",
    )
    part_buffer_budget: int = Field(
        16,
        ge=0,
        description="MiB of part buffers a server process may hold for parts uploading in the "
        "background, over all its uploads; an upload whose next part does not fit waits for it "
        "to upload before it receives more (0: no pipelining). Per worker process.",
    )
    upload_claim_seconds: float = Field(
        30.0,
        ge=2.0,
        le=3600.0,
        description="A request adding parts to an upload session another request started "
        "claims the session (a conditional write) and renews the claim every sixth of this "
        "while its parts upload; a replica that dies mid-chunk keeps the session busy (416 to "
        "other chunks) for at most this long. Replicas' clocks must agree to well within it.",
    )
    max_pool_connections: int = Field(64, ge=1, description="HTTP connection pool size.")
    access_key_id: str | None = Field(
        None,
        description="Static access key. Unset (recommended): the standard AWS credential chain "
        "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, web identity for IRSA, "
        "instance metadata).",
    )
    secret_access_key: str | None = Field(
        None, repr=False, description="Static secret key (prefer the credential chain)."
    )
    profile: str | None = Field(None, description="Named profile from the AWS config files.")
    ca_bundle: str | None = Field(
        None, description="CA bundle for an https endpoint (unset: AWS_CA_BUNDLE or the default)."
    )
    verify_tls: bool = Field(True, description="Verify the endpoint's TLS certificate.")
    connect_timeout: float = Field(5.0, gt=0, description="Connect timeout (seconds).")
    read_timeout: float = Field(60.0, gt=0, description="Read timeout per request (seconds).")
    fast_path: bool = Field(
        True,
        description="Sign and send single-object GET/HEAD/PUT/DELETE with Berth's own lean "
        "SigV4 client instead of botocore (path-style with endpoint_url only).",
    )
    prune_directories: bool = Field(
        True,
        description="After a delete, also delete the empty directory entries that some stores "
        "(SeaweedFS) keep and list; harmless elsewhere (one more DELETE per delete).",
    )
    max_attempts: int = Field(
        5,
        ge=1,
        le=20,
        description="Attempts per request (with exponential backoff and jitter) for throttling, "
        "5xx answers, timeouts and connection resets; then the registry answers 503.",
    )


class StorageSettings(_Section):
    driver: Literal["filesystem", "s3"] = Field("filesystem", description="Storage driver.")
    filesystem: FilesystemSettings = FilesystemSettings()
    s3: S3Settings = S3Settings()
    redirect: bool = Field(
        True, description="Answer blob GETs with a 307 to a presigned URL where the driver can."
    )
    redirect_expiry_seconds: int = Field(1200, ge=1, description="Presigned URL lifetime.")
    delete_enabled: bool = Field(True, description="Allow DELETE of manifests, tags and blobs.")
    read_only: bool = Field(False, description="Refuse every write with 405 UNSUPPORTED.")


class CacheSettings(_Section):
    manifest_bytes: int = Field(
        64 * 1024 * 1024, ge=0, description="In-process cache of manifest bodies, in bytes."
    )
    blob_descriptors: int = Field(
        100_000,
        ge=0,
        description="In-process cache of blob sizes, in entries (also bounds the link cache; "
        "with several workers, the table of links and sizes they share has this many slots, "
        "rounded up to a power of two, 40 bytes each, in /dev/shm).",
    )
    link_staleness_seconds: float = Field(
        5.0,
        ge=0,
        description="How long a replica trusts that a repository links a blob or manifest "
        "without asking storage again: a delete on another replica is seen within this bound "
        "(at once on the replica that made it). Absence is never cached. 0: always ask.",
    )
    reservation_reuse_seconds: float = Field(
        10.0,
        ge=0,
        le=300,
        description="A write that relies on a blob (manifest PUT, mount, upload of existing "
        "content) reuses this process's GC reservation of it (docs/gc.md) for this long "
        "instead of writing its `touch` and listing again. `berth gc` keeps everything "
        "written within its grace period plus this window, so set the same value for the "
        "replicas and for `berth gc`. 0: reserve on every write.",
    )
    gc_lease_staleness_seconds: float = Field(
        10.0,
        ge=0,
        le=60,
        description="How old a replica's last look at the garbage-collection lease may be for "
        "it to trust that no GC is removing blobs: a write that relies on a blob then skips "
        "listing the blob's directory for GC tombstones (docs/gc.md). A GC run waits this "
        "long after taking its lease before it removes anything, so set the same value for "
        "the replicas and for `berth gc`. 0: always list.",
    )
    redirect_reuse_fraction: float = Field(
        0.25,
        ge=0,
        le=0.5,
        description="A blob's presigned redirect URL is reused for this fraction of its "
        "validity (`storage.redirect_expiry_seconds`), so clients always get at least the "
        "rest. 0: sign every redirect.",
    )


class LimitSettings(_Section):
    max_manifest_bytes: int = Field(
        4 * 1024 * 1024, ge=1024, description="Largest manifest accepted."
    )
    max_page_size: int = Field(1000, ge=1, description="Largest `n` for tags and catalog.")


class ObservabilitySettings(_Section):
    log_level: str = Field("info", description="Log level.")
    log_format: Literal["json", "text"] = Field("json", description="Log line format.")
    access_log: bool = Field(True, description="Log every request.")
    metrics: bool = Field(True, description="Expose Prometheus metrics at /metrics.")
    metrics_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="Serve /metrics on this port of http.host instead of the API port (which "
        "then has no /metrics): keeps metrics off an Ingress, and with http.workers > 1 one "
        "scrape covers every worker. Unset (the default, handy on a workstation): /metrics is "
        "on the API port and shows the answering worker only. The operator sets 9090.",
    )
    storage_check_seconds: float = Field(
        30.0,
        ge=0,
        description="How often each process checks that storage answers (the "
        "berth_storage_up gauge); /healthz/storage checks on demand. 0: on demand only.",
    )
    storage_check_timeout_seconds: float = Field(
        10.0, gt=0, description="A storage health check slower than this counts as failed."
    )
    tracing: bool = Field(
        False,
        description="Record OpenTelemetry spans (exported by OTLP when "
        "OTEL_EXPORTER_OTLP_ENDPOINT is set).",
    )


class PolicyRuleSettings(_Section):
    repositories: list[str] = Field(
        [],
        description="Repository globs: `*` matches within one path component, `**` across "
        "components, `?` one character.",
    )
    catalog: bool = Field(False, description="The rule is about the catalog (registry:catalog:*).")
    users: list[str] = Field([], description="User names; `*` is any authenticated user.")
    groups: list[str] = Field([], description="Group names (see auth.groups).")
    anonymous: bool = Field(False, description="The rule applies to everyone, logged in or not.")
    actions: list[Literal["pull", "push", "delete", "*"]] = Field(
        ["pull"], description="Actions granted: pull, push, delete, or * for all."
    )


class TokenSettings(_Section):
    realm: str | None = Field(
        None,
        description="Token endpoint URL announced in challenges. Unset: this registry's own "
        "/auth/token (from http.base_url or the request's Host).",
    )
    service: str = Field("berth", description="Service name: the `aud` of accepted tokens.")
    issuer: str = Field("berth", description="The `iss` of issued and of accepted tokens.")
    signing_key_file: Path | None = Field(
        None,
        description="PEM private key (EC P-256 or RSA) of the built-in token endpoint "
        "(`berth keygen`). Unset: no built-in endpoint, external tokens only.",
    )
    lifetime_seconds: int = Field(300, ge=10, le=86400, description="Issued token lifetime.")
    trusted_keys_file: Path | None = Field(
        None, description="JWKS JSON or PEM bundle (public keys or certificates) of issuers."
    )
    jwks_url: str | None = Field(None, description="JWKS URL of an external issuer.")
    jwks_refresh_seconds: int = Field(300, ge=10, description="How often jwks_url is re-read.")
    algorithms: list[str] = Field(
        ["ES256", "RS256"],
        description="Accepted signature algorithms (ES256/384/512, RS256/384/512, PS256/384/512).",
    )
    leeway_seconds: int = Field(30, ge=0, le=300, description="Clock skew allowed on exp/nbf.")


class AuthSettings(_Section):
    mode: Literal["none", "htpasswd", "token"] = Field(
        "none", description="none (anonymous, the default), htpasswd (Basic) or token (Bearer)."
    )
    htpasswd_file: Path | None = Field(
        None, description="htpasswd file with bcrypt entries; re-read when it changes."
    )
    policy_file: Path | None = Field(
        None, description="YAML file with `groups` and `rules` (replaces the inline ones)."
    )
    groups: dict[str, list[str]] = Field({}, description="Group name to member user names.")
    rules: list[PolicyRuleSettings] = Field(
        [],
        description="Access rules. None at all: every authenticated user may do everything.",
    )
    token: TokenSettings = TokenSettings()


class MaintenanceSettings(_Section):
    upload_purge_age_seconds: int = Field(
        7 * 24 * 3600,
        ge=60,
        description="Upload sessions older than this are purged (by `berth gc`, and by "
        "`berth serve` when upload_purge_interval_seconds is set).",
    )
    upload_purge_interval_seconds: int = Field(
        24 * 3600,
        ge=0,
        description="How often `berth serve` purges stale uploads; one replica at a time "
        "(a lease object in storage). 0 disables it (`berth gc` still purges).",
    )
    gc_grace_period_seconds: int = Field(
        3600,
        ge=0,
        description="Default grace period of `berth gc` (its --grace-period flag wins): "
        "anything written or linked more recently is kept.",
    )
    config_reload_seconds: float = Field(
        5.0,
        ge=0,
        description="How often `berth serve` re-reads its --config file for settings that "
        "apply without a restart (storage.read_only); 0: only on SIGHUP.",
    )


class ManifestValidationSettings(_Section):
    allow_sparse: bool = Field(
        False,
        description="Accept image manifests and indexes whose referenced blobs (config, layers) "
        "or child manifests are absent from the repository, as mirrors copying only some "
        "platforms push them. Referenced content that is present must still match its "
        "descriptor's size. Off: such a push is refused with MANIFEST_BLOB_UNKNOWN.",
    )


class ValidationSettings(_Section):
    manifests: ManifestValidationSettings = ManifestValidationSettings()


EventAction = Literal["push", "pull", "mount", "delete", "fill"]
_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")


def _readable(path: Path | None) -> Path | None:
    if path is not None:
        try:
            path.read_bytes()
        except OSError as exc:
            raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    return path


class NotificationEndpointSettings(_Section):
    name: str = Field(
        pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$",
        description="Unique name (lowercase letters, digits, `.`, `_`, `-`): names the "
        "endpoint in logs, metrics, `berth events` and its delivery state in storage.",
    )
    url: str = Field(description="http(s) URL each event is POSTed to.")
    format: Literal["distribution", "cloudevents"] = Field(
        "distribution",
        description="distribution: CNCF Distribution's envelope "
        "(`application/vnd.docker.distribution.events.v1+json`); cloudevents: CloudEvents 1.0 "
        "structured JSON.",
    )
    actions: list[EventAction] = Field(
        ["push", "mount", "delete", "fill"],
        description="Actions sent: push, pull, mount, delete, fill (default: all but pull).",
    )
    repositories: list[str] = Field(
        [],
        description="Repository globs (`*` within a path component, `**` across, `?` one "
        "character); empty: every repository.",
    )
    media_types: list[str] = Field(
        [], description="Target media types sent (exact); empty: every media type."
    )
    secret_file: Path | None = Field(
        None,
        description="File holding the HMAC-SHA256 key for the `Berth-Signature` header "
        "(surrounding whitespace ignored).",
    )
    secret_env: str | None = Field(
        None, description="Environment variable holding the signature key (if no secret_file)."
    )
    headers: dict[str, list[str]] = Field({}, description="Extra request headers.")
    header_files: dict[str, Path] = Field(
        {},
        description="Extra request headers whose value is read from a file (a mounted Secret), "
        "e.g. `{Authorization: /run/secrets/hook-token}`.",
    )
    timeout_seconds: float = Field(5.0, gt=0, description="Timeout of one delivery attempt.")
    backoff_seconds: float = Field(
        1.0, gt=0, description="Wait after the first failed attempt; doubled after each next one."
    )
    max_backoff_seconds: float = Field(300.0, gt=0, description="Longest wait between attempts.")
    max_attempts: int = Field(
        10, ge=1, description="Attempts per event before it becomes a dead letter."
    )
    queue_size: int = Field(
        10_000,
        ge=1,
        description="Most events waiting for this endpoint; beyond it the oldest are dropped "
        "(counted in berth_events_dropped_total and logged).",
    )
    ca_file: Path | None = Field(
        None, description="PEM CA bundle for an https receiver with a private CA."
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises on a port that does not parse
        except ValueError as exc:
            raise ValueError(f"not a URL: {exc}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        return value

    @field_validator("headers", "header_files")
    @classmethod
    def _header_names(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name, values in value.items():
            if not _HEADER_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not an HTTP header name")
            if isinstance(values, list) and any("\r" in v or "\n" in v for v in values):
                raise ValueError(f"the value of {name} has a line break")
        return value

    @field_validator("secret_file", "ca_file")
    @classmethod
    def _file(cls, value: Path | None) -> Path | None:
        return _readable(value)

    @field_validator("header_files")
    @classmethod
    def _header_files(cls, value: dict[str, Path]) -> dict[str, Path]:
        for path in value.values():
            _readable(path)
        return value

    @field_validator("secret_env")
    @classmethod
    def _env(cls, value: str | None) -> str | None:
        if value is not None and not os.environ.get(value):
            raise ValueError(f"environment variable {value} is not set")
        return value


class NotificationSettings(_Section):
    endpoints: list[NotificationEndpointSettings] = Field(
        [],
        description="Receivers of registry events (docs/events.md). None: nothing is "
        "recorded, at no cost.",
    )
    dead_letter_retention_seconds: int = Field(
        7 * 24 * 3600,
        ge=0,
        description="How long events that failed every attempt are kept (for `berth events` "
        "to list and replay).",
    )
    claim_ttl_seconds: float = Field(
        60.0,
        ge=1,
        description="An endpoint's delivery claim (held by one replica) is taken over by "
        "another this long after its holder stopped renewing it.",
    )
    poll_seconds: float = Field(
        1.0,
        gt=0,
        description="How often a replica looks for events recorded by other replicas (its own "
        "are delivered at once).",
    )

    @field_validator("endpoints", mode="wrap")
    @classmethod
    def _name_the_endpoint(
        cls, value: Any, handler: ValidatorFunctionWrapHandler
    ) -> list[NotificationEndpointSettings]:
        """Name the endpoint and the key in every error, not only the list index."""
        try:
            endpoints: list[NotificationEndpointSettings] = handler(value)
        except ValidationError as exc:
            problems = []
            for error in exc.errors():
                loc = list(error["loc"])
                name: Any = loc[0] if loc else "?"
                if isinstance(name, int) and isinstance(value, list) and name < len(value):
                    item = value[name]
                    name = item.get("name", f"#{name}") if isinstance(item, dict) else name
                key = ".".join(str(p) for p in loc[1:]) or "(endpoint)"
                message = str(error["msg"]).removeprefix("Value error, ")
                problems.append(f"endpoint {name!r}: {key}: {message}")
            raise ValueError("; ".join(problems)) from None
        return endpoints

    @model_validator(mode="after")
    def _unique_names(self) -> NotificationSettings:
        seen: set[str] = set()
        for endpoint in self.endpoints:
            if endpoint.name in seen:
                raise ValueError(f"endpoint {endpoint.name!r}: name: used by two endpoints")
            seen.add(endpoint.name)
        return self


class UpstreamSettings(_Section):
    name: str = Field(
        description="Selects the upstream by repository prefix: `/v2/NAME/library/nginx/...`. "
        "Local repositories whose first component is NAME are refused."
    )
    url: str = Field(description="Base URL of the upstream registry (http or https).")
    namespace: str | None = Field(
        None,
        description="Selects the upstream by containerd's `?ns=` query parameter (a mirror "
        "request: `/v2/library/nginx/...?ns=docker.io`). Unset: the url's host "
        "(registry-1.docker.io counts as docker.io). An upstream whose namespace is docker.io "
        "gets Docker Hub's implicit `library/` for one-component names.",
    )
    username: str | None = Field(None, description="User for Basic or token auth upstream.")
    password_file: Path | None = Field(
        None,
        description="File holding the upstream password (so a Secret can supply it); read at "
        "start, trailing newline ignored.",
    )
    tag_ttl_seconds: float = Field(
        300.0,
        ge=0,
        description="How long a tag (and tag list, referrers) is served without "
        "asking the upstream again.",
    )
    repositories: list[str] = Field(
        [],
        description="Allow-list of upstream repository globs (`*` within a component, `**` "
        "across); others are NAME_UNKNOWN. Empty: every repository.",
    )
    ca_file: Path | None = Field(None, description="PEM CA bundle trusted for the upstream.")
    insecure: bool = Field(False, description="Skip TLS verification of the upstream.")
    egress_proxy: str | None = Field(
        None, description="HTTP(S) proxy URL for requests to this upstream (`http://host:port`)."
    )
    anonymous_fill: bool = Field(
        True,
        description="Whether anonymous callers (auth.mode none, or pull rules with "
        "`anonymous`) may cause upstream fetches; off: they get only what is cached.",
    )
    connect_timeout_seconds: float = Field(10.0, gt=0, description="Upstream connect timeout.")
    read_timeout_seconds: float = Field(
        60.0, gt=0, description="Longest wait for upstream bytes (headers or the next chunk)."
    )

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*", value):
            raise ValueError(f"upstream name {value!r} is not a repository name component")
        return value

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"upstream url {value!r} must be http(s)://host[:port]")
        if parts.path.strip("/") or parts.query or parts.fragment:
            raise ValueError(f"upstream url {value!r} must not have a path or query")
        return f"{parts.scheme}://{parts.netloc}"

    @field_validator("egress_proxy")
    @classmethod
    def _check_proxy(cls, value: str | None) -> str | None:
        if value is not None:
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"egress_proxy {value!r} must be http(s)://host:port")
        return value

    @model_validator(mode="after")
    def _check_files(self) -> UpstreamSettings:
        if self.password_file is not None:
            try:
                self.password_file.read_text()
            except (OSError, UnicodeDecodeError) as exc:
                raise ValueError(
                    f"upstream {self.name}: password_file {self.password_file} is not "
                    f"readable: {exc}"
                ) from None
        if self.ca_file is not None and not self.ca_file.is_file():
            raise ValueError(f"upstream {self.name}: ca_file {self.ca_file} is not a file")
        return self

    @property
    def resolved_namespace(self) -> str:
        if self.namespace:
            return self.namespace
        host = urlsplit(self.url).netloc
        return "docker.io" if host in DOCKER_HUB_HOSTS else host

    def password(self) -> str | None:
        if self.password_file is None:
            return None
        return self.password_file.read_text().rstrip("\r\n")


DOCKER_HUB_HOSTS = frozenset({"registry-1.docker.io", "index.docker.io", "docker.io"})


class ProxySettings(_Section):
    upstreams: list[UpstreamSettings] = Field(
        [],
        description="Pull-through cache upstreams (docs/proxy.md). Each caches under its "
        "name as a repository prefix; pushes there are refused.",
    )
    fill_claim_wait_seconds: float = Field(
        60.0,
        ge=0,
        description="A replica missing a blob that another replica is fetching (a claim in "
        "storage) waits this long for it to be stored before fetching it itself; a claim "
        "older than this is considered abandoned. 0: never wait.",
    )
    evict_unused_seconds: float = Field(
        0.0,
        ge=0,
        description="`berth gc` evicts cached blobs of proxied repositories that no pull used "
        "for this long (blobs a local repository also references stay); the next pull fetches "
        "them again. 0: no eviction by age.",
    )
    max_bytes: int = Field(
        0,
        ge=0,
        description="`berth gc` evicts the least recently used cached blobs of proxied "
        "repositories until they fit in this many bytes. 0: no size cap.",
    )
    access_record_seconds: float = Field(
        600.0,
        gt=0,
        description="A replica records that a cached blob was used (an object in storage, "
        "written in the background) at most once per blob per this many seconds.",
    )

    @model_validator(mode="after")
    def _check_unique(self) -> ProxySettings:
        for what, values in (
            ("name", [u.name for u in self.upstreams]),
            ("namespace", [u.resolved_namespace for u in self.upstreams]),
        ):
            seen: set[str] = set()
            for value in values:
                if value in seen:
                    raise ValueError(f"two proxy upstreams have the {what} {value!r}")
                seen.add(value)
        return self


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="BERTH_", env_nested_delimiter="__", extra="forbid"
    )

    http: HTTPSettings = HTTPSettings()
    storage: StorageSettings = StorageSettings()
    cache: CacheSettings = CacheSettings()
    limits: LimitSettings = LimitSettings()
    observability: ObservabilitySettings = ObservabilitySettings()
    auth: AuthSettings = AuthSettings()
    maintenance: MaintenanceSettings = MaintenanceSettings()
    validation: ValidationSettings = ValidationSettings()
    notifications: NotificationSettings = NotificationSettings()
    proxy: ProxySettings = ProxySettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Flags (init) beat the environment, which beats the YAML file (when one is configured).
        return (init_settings, env_settings, YamlConfigSettingsSource(settings_cls))


def load_settings(
    config_file: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> Settings:
    """Build settings from a YAML file, the environment and explicit overrides (nested dicts)."""
    if config_file is None:
        return Settings(**(overrides or {}))
    path = Path(config_file)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")

    class FileSettings(Settings):
        model_config = SettingsConfigDict(yaml_file=path)

    return FileSettings(**(overrides or {}))


def set_nested(target: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``d["a"]["b"]["c"] = value`` for the dotted path ``"a.b.c"``."""
    *parents, leaf = dotted.split(".")
    for part in parents:
        target = target.setdefault(part, {})
    target[leaf] = value


__all__ = ["Settings", "load_settings", "set_nested"]
