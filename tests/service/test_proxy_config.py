"""Pull-through configuration (clear errors at start) and routing (prefix, ``?ns=``, Docker
Hub's implicit ``library/``, allow-lists), without any upstream."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from berth import cli
from berth.config import ProxySettings, UpstreamSettings
from berth.proxy.routing import Routing
from berth.proxy.upstream_auth import TokenCache, parse_challenge, token_from_answer
from berth.registry.errors import NameUnknown


def _upstreams(*items: dict[str, Any]) -> ProxySettings:
    return ProxySettings.model_validate({"upstreams": list(items)})


def test_namespace_defaults_to_the_url_host_and_docker_hub_is_docker_io() -> None:
    proxy = _upstreams(
        {"name": "hub", "url": "https://registry-1.docker.io"},
        {"name": "ghcr", "url": "https://ghcr.io/"},
        {"name": "local", "url": "http://127.0.0.1:5001", "namespace": "mirror.test"},
    )
    assert [u.resolved_namespace for u in proxy.upstreams] == [
        "docker.io",
        "ghcr.io",
        "mirror.test",
    ]
    assert proxy.upstreams[1].url == "https://ghcr.io"


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (
            [{"name": "a", "url": "https://x.io"}, {"name": "a", "url": "https://y.io"}],
            "two proxy upstreams have the name 'a'",
        ),
        (
            [{"name": "a", "url": "https://x.io"}, {"name": "b", "url": "https://x.io"}],
            "two proxy upstreams have the namespace 'x.io'",
        ),
        ([{"name": "a", "url": "ftp://x.io"}], "must be http(s)://host"),
        ([{"name": "a", "url": "https://x.io/v2/"}], "must not have a path"),
        ([{"name": "A b", "url": "https://x.io"}], "not a repository name component"),
        (
            [{"name": "a", "url": "https://x.io", "password_file": "/nonexistent/pw"}],
            "not readable",
        ),
        ([{"name": "a", "url": "https://x.io", "egress_proxy": "socks5://p:1"}], "egress_proxy"),
    ],
)
def test_bad_upstream_config_is_a_clear_error(items: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        _upstreams(*items)


def test_bad_upstream_config_fails_berth_serve_at_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        json.dumps(
            {
                "proxy": {
                    "upstreams": [{"name": "hub", "url": "https://x.io", "password_file": "/no"}]
                }
            }
        )
    )
    assert cli.main(["serve", "--config", str(config)]) == 2
    assert "password_file /no is not readable" in capsys.readouterr().err


def test_password_file_is_read_without_its_newline(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    upstream = UpstreamSettings(name="a", url="https://x.io", password_file=secret)
    assert upstream.password() == "s3cret"


ROUTING = Routing(
    _upstreams(
        {"name": "hub", "url": "https://registry-1.docker.io", "repositories": ["library/*"]},
        {"name": "ghcr", "url": "https://ghcr.io"},
    ).upstreams
)


@pytest.mark.parametrize(
    ("path", "ns", "expected"),
    [
        (
            "/v2/library/nginx/manifests/latest",
            "docker.io",
            "/v2/hub/library/nginx/manifests/latest",
        ),
        ("/v2/nginx/blobs/sha256:ab", "docker.io", "/v2/hub/library/nginx/blobs/sha256:ab"),
        ("/v2/hub/nginx/tags/list", None, "/v2/hub/library/nginx/tags/list"),
        ("/v2/hub/library/nginx/manifests/1", None, None),  # already the prefixed name
        ("/v2/org/app/referrers/sha256:ab", "ghcr.io", "/v2/ghcr/org/app/referrers/sha256:ab"),
        ("/v2/ghcr/app/manifests/1", None, None),  # no implicit library/ outside Docker Hub
        ("/v2/local/app/manifests/1", None, None),
        ("/v2/", "docker.io", None),
        ("/v2/_catalog", "docker.io", None),
    ],
)
def test_both_routes_lead_to_the_prefixed_name(
    path: str, ns: str | None, expected: str | None
) -> None:
    assert ROUTING.rewrite(path, ns) == expected


def test_routing_refuses_unknown_namespaces_and_names_outside_the_allow_list() -> None:
    with pytest.raises(NameUnknown, match=r"quay\.io"):
        ROUTING.rewrite("/v2/org/app/manifests/1", "quay.io")
    with pytest.raises(NameUnknown, match="not mirrored"):
        ROUTING.route("hub/bitnami/redis")
    with pytest.raises(NameUnknown):
        ROUTING.route("hub")
    route = ROUTING.route("hub/library/nginx")
    assert route is not None and (route.label, route.remote) == ("hub", "library/nginx")
    assert ROUTING.route("local/app") is None
    assert ROUTING.proxied("ghcr/org/app") and not ROUTING.proxied("local/ghcr")


def test_challenges_and_tokens() -> None:
    challenge = parse_challenge(
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/nginx:pull"'
    )
    assert challenge is not None and challenge.scheme == "bearer"
    assert challenge.realm == "https://auth.docker.io/token"
    assert challenge.params["scope"] == "repository:library/nginx:pull"
    assert parse_challenge('Basic realm="x"') is not None
    assert token_from_answer({"access_token": "t", "expires_in": 300}) == ("t", 300.0)
    with pytest.raises(ValueError, match="no token"):
        token_from_answer({"expires_in": 1})
    cache = TokenCache()
    cache.put("s", "t", 300)
    assert cache.get("s") == "t" and cache.get("other") is None
    cache.put("unsaid", "t", None)  # no expires_in: the spec's default lifetime (60 s)
    assert cache.get("unsaid") == "t"
