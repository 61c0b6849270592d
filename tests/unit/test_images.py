"""Recognising the images people deploy: the built-in profiles' image knowledge, image by image, the
sole-rule fallback for a Deployment that names a profile, and audit's honesty about what it cannot see."""

from __future__ import annotations

import json
from typing import Any

import pytest

from podgrace.core import capabilities, planner
from podgrace.core.findings import Code
from podgrace.core.models import ContainerMatch, Role, ShutdownProfile, image_matches, split_image
from podgrace.core.planner import Outcome

CAPS = capabilities.from_description((1, 34), {})

APPS = ["wordpress", "drupal", "joomla", "nextcloud", "mediawiki", "matomo", "phpmyadmin"]

# (image, the role podgrace recognises, None: not a server it knows)
IMAGES: list[tuple[str, Role | None]] = [
    *[(f"{app}:latest", Role.APACHE) for app in APPS],  # the default variant is Apache + mod_php
    *[(app, Role.APACHE) for app in APPS],  # no tag at all
    *[(f"{app}:1-apache", Role.APACHE) for app in APPS],
    *[(f"docker.io/library/{app}:1-apache", Role.APACHE) for app in APPS],
    *[(f"{app}:1-fpm", Role.PHP_FPM) for app in APPS],
    *[(f"{app}:1-fpm-alpine", Role.PHP_FPM) for app in APPS],
    *[(f"registry.example.com:5000/mirror/{app}:fpm", Role.PHP_FPM) for app in APPS],
    ("wordpress:6.6.2-php8.3-apache", Role.APACHE),
    ("wordpress:6.6.2-php8.3-fpm-alpine", Role.PHP_FPM),
    ("wordpress:6.6-php8.3", Role.APACHE),
    ("wordpress@sha256:" + "a" * 64, Role.APACHE),
    ("wordpress:6-fpm@sha256:" + "a" * 64, Role.PHP_FPM),
    ("wordpress:cli", None),  # WP-CLI, no server
    ("wordpress:cli-2.11-php8.3", None),
    ("drupal:10.3-php8.3-apache-bookworm", Role.APACHE),
    ("drupal:10-php8.3-fpm-alpine3.20", Role.PHP_FPM),
    ("nextcloud:29-apache", Role.APACHE),
    ("phpmyadmin/phpmyadmin:5.2", Role.APACHE),
    ("php:8.3-apache", Role.APACHE),
    ("php:8.3-apache-bookworm", Role.APACHE),
    ("php:8.3-fpm", Role.PHP_FPM),
    ("php:8.3-fpm-alpine", Role.PHP_FPM),
    ("docker.io/library/php:8.2-fpm-bookworm", Role.PHP_FPM),
    ("php:8.3-cli", None),  # the php image's default variant is the CLI
    ("php:8.3-zts", None),
    ("httpd:2.4", Role.APACHE),
    ("httpd:2.4-alpine", Role.APACHE),
    ("nginx:1.27", Role.NGINX),
    ("nginx:1.27-alpine", Role.NGINX),
    ("nginx:mainline", Role.NGINX),
    # vendors' images
    ("bitnami/wordpress:6", Role.APACHE),
    ("docker.io/bitnami/drupal:10", Role.APACHE),
    ("bitnami/apache:2.4", Role.APACHE),
    ("bitnami/nginx:1.27", Role.NGINX),
    ("bitnami/php-fpm:8.3", Role.PHP_FPM),
    ("bitnami/openresty:1.25", Role.NGINX),
    ("ubuntu/nginx:1.24-24.04_beta", Role.NGINX),
    ("ubuntu/apache2:2.4-22.04_beta", Role.APACHE),
    ("nginxinc/nginx-unprivileged:1.27-alpine", Role.NGINX),
    ("openresty/openresty:1.25.3.2-alpine", Role.NGINX),
    # not web servers podgrace knows
    ("nginx/nginx-prometheus-exporter:1.3", None),
    ("bitnami/wordpress-nginx:6", None),  # nginx and php-fpm in one container: no single role
    ("redis:7", None),
    ("busybox", None),
]


def _role(image: str, known: dict[str, ShutdownProfile]) -> Role | None:
    from podgrace.core.models import ContainerView, Workload

    pod = Workload(name="x", containers=(ContainerView(name="app", image=image),))
    found = planner.detect_expectations(pod, known)
    return found[0].role if found else None


@pytest.mark.parametrize(("image", "role"), IMAGES, ids=[image for image, _ in IMAGES])
def test_builtin_profiles_know_the_image(
    builtin_profiles: dict[str, ShutdownProfile], image: str, role: Role | None
) -> None:
    assert _role(image, builtin_profiles) == role


@pytest.mark.parametrize(
    ("image", "pattern", "matches"),
    [
        ("wordpress:6-fpm", "wordpress:*fpm*", True),
        ("wordpress:6-apache", "wordpress:*fpm*", False),
        ("docker.io/library/wordpress:6-fpm", "wordpress:*fpm*", False),  # the repository is matched whole
        ("docker.io/library/wordpress:6-fpm", "*/wordpress:*fpm*", True),
        ("reg:5000/clients/php-fpm:8", "*:*cli*", False),  # a tag glob sees the tag, not the registry port
        ("reg:5000/php:8-cli", "*:*cli*", True),
        ("wordpress", "wordpress:*", True),  # no tag: the empty tag
        ("wordpress", "wordpress:?*", False),
        ("php:8.3-fpm", "*php*fpm*", True),  # no tag part: the whole reference
        ("nginx:1.27", "nginx", True),  # ... or the repository
        ("reg:5000/nginx", "reg:5000/*", True),  # a colon before the last slash is not a tag part
    ],
)
def test_image_globs(image: str, pattern: str, matches: bool) -> None:
    assert image_matches(image, pattern) is matches


@pytest.mark.parametrize(
    ("image", "parts"),
    [
        ("nginx", ("nginx", "")),
        ("nginx:1.27", ("nginx", "1.27")),
        ("reg:5000/ns/nginx", ("reg:5000/ns/nginx", "")),
        ("reg:5000/ns/nginx:1.27@sha256:abc", ("reg:5000/ns/nginx", "1.27")),
        ("nginx@sha256:abc", ("nginx", "")),
    ],
)
def test_split_image(image: str, parts: tuple[str, str]) -> None:
    assert split_image(image) == parts


def test_exclusion_wins_over_the_container_name() -> None:
    match = ContainerMatch.model_validate({"containerNames": ["php"], "excludeImages": ["*:*apache*"]})
    assert match.matches("php", "php:8.3-fpm")
    assert not match.matches("php", "php:8.3-apache")


# --- a Deployment that names a profile: the sole-rule fallback -------------------------------------------

SOLE = [
    # (profile, containers (name, image), annotations, rule applied to, notice?)
    ("apache", [("app", "registry.example.com/shop/frontend:2.1")], {}, "app"),
    ("nginx", [("web", "ghcr.io/acme/edge:7")], {}, "web"),
    ("apache", [("app", "acme/site:1"), ("cron", "busybox")], {"podgrace.dev/containers": "app"}, "app"),
]


@pytest.mark.parametrize(("profile", "containers", "annotations", "target"), SOLE)
def test_the_only_rule_applies_to_the_only_container(
    builtin_profiles: dict[str, ShutdownProfile],
    workload: Any,
    container: Any,
    profile: str,
    containers: list[tuple[str, str]],
    annotations: dict[str, str],
    target: str,
) -> None:
    pod = workload(*(container(n, i) for n, i in containers), profile=profile, annotations=annotations)
    result = planner.plan(pod, builtin_profiles, CAPS)
    assert result.outcome is Outcome.MANAGED
    assert [s.name for s in result.containers] == [target]
    rule = builtin_profiles[profile].spec.containers[0]
    assert result.containers[0].role is rule.role
    (notice,) = result.notices
    assert (notice.code, notice.container) == (Code.SOLE_RULE_APPLIED, target)
    assert f"rule {rule.name!r}" in notice.message and profile in notice.message
    assert not result.decisions
    assert result.unrecognised == ()


@pytest.mark.parametrize(
    ("profile", "containers", "why"),
    [
        ("apache", [("app", "acme/site:1"), ("worker", "acme/worker:1")], "two containers"),
        ("nginx-php-fpm", [("app", "acme/site:1")], "the profile has two rules"),
        ("apache", [("app", "wordpress:6-fpm")], "the rule excludes the image: it is php-fpm"),
    ],
    ids=["two-containers", "two-rules", "excluded-image"],
)
def test_no_fallback(
    builtin_profiles: dict[str, ShutdownProfile],
    workload: Any,
    container: Any,
    profile: str,
    containers: list[tuple[str, str]],
    why: str,
) -> None:
    pod = workload(*(container(n, i) for n, i in containers), profile=profile)
    result = planner.plan(pod, builtin_profiles, CAPS)
    assert not result.containers and not result.notices, why
    assert [d.code for d in result.decisions] == [Code.NO_MATCHING_CONTAINERS]
    assert result.unrecognised == tuple(n for n, _ in containers)


def test_the_issue_example_is_now_managed(
    builtin_profiles: dict[str, ShutdownProfile], workload: Any, container: Any
) -> None:
    """`podgrace.dev/profile: apache` on a wordpress pod used to change nothing (NoMatchingContainers)."""
    result = planner.plan(
        workload(container("wordpress", "wordpress:6.6"), profile="apache"), builtin_profiles, CAPS
    )
    assert [(s.name, s.role) for s in result.containers] == [("wordpress", Role.APACHE)]
    assert result.notices == ()  # matched by the image knowledge, no assumption needed


# --- render and audit ------------------------------------------------------------------------------------


def test_render_says_what_it_assumed(run_cli: Any, yaml_file: Any, deployment: Any) -> None:
    manifest = deployment([{"name": "app", "image": "acme/site:1"}], profile="apache")
    result = run_cli("render", "-f", yaml_file(manifest))
    assert result.code == 0
    (line,) = result.err.splitlines()
    assert line.startswith("note: default/shop container app: image 'acme/site:1' matches no rule")
    assert "rule 'apache' (apache) applies" in line
    assert "lifecycle" in result.out


@pytest.mark.parametrize("output", ["text", "json"])
def test_audit_lists_unrecognised_containers(
    run_cli: Any, yaml_file: Any, deployment: Any, output: str
) -> None:
    nothing_known = deployment([{"name": "cache", "image": "redis:7"}], name="cache")
    partly_known = deployment(
        [
            {
                "name": "web",
                "image": "httpd:2.4",
                "lifecycle": {"preStop": {"sleep": {"seconds": 5}}, "stopSignal": "SIGWINCH"},
            },
            {"name": "envoy", "image": "envoyproxy/envoy:v1.31"},
        ],
        name="site",
        grace=60,
    )
    result = run_cli("audit", "-f", yaml_file(nothing_known, partly_known), "-o", output)
    assert result.code == 0  # nothing at risk, but not called safe either
    if output == "json":
        cache, site = json.loads(result.out)["workloads"]
        assert (cache["status"], cache["atRisk"]) == ("notAssessed", False)
        assert [u["container"] for u in cache["unrecognised"]] == ["cache"]
        assert (site["status"], [u["container"] for u in site["unrecognised"]]) == ("ok", ["envoy"])
    else:
        assert result.out.splitlines() == [
            "default/cache (not opted in): not assessed, no container recognised",
            "  Unrecognised             cache: image 'redis:7'",
            "default/site (not opted in)",
            "  Unrecognised             envoy: image 'envoyproxy/envoy:v1.31'",
            "0 of 2 workloads at risk of dropping requests on termination; 1 not assessed (no container "
            "recognised)",
        ]


@pytest.mark.parametrize(
    ("annotations", "code"),
    [
        ({"podgrace.dev/profile": "nginxx"}, "UnknownProfile"),
        ({"podgrace.dev/profile": "nginx-php-fpm"}, "NoMatchingContainers"),
        ({"podgrace.dev/profile": "nginx-php-fpm", "podgrace.dev/mode": "audit"}, "NoMatchingContainers"),
    ],
    ids=["unknown", "non-matching", "non-matching-audit-mode"],
)
def test_audit_a_profile_that_does_not_apply_is_at_risk(
    run_cli: Any, yaml_file: Any, deployment: Any, annotations: dict[str, str], code: str
) -> None:
    manifest = deployment([{"name": "cache", "image": "redis:7"}], annotations=annotations)
    result = run_cli("audit", "-f", yaml_file(manifest), "-o", "json")
    assert result.code == 1
    (entry,) = json.loads(result.out)["workloads"]
    assert entry["atRisk"] and entry["status"] == "atRisk"
    assert [f["code"] for f in entry["findings"]] == [code]
