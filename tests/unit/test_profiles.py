"""ShutdownProfiles: the built-ins, validation of user profiles, and agreement with the CRD schema."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from podgrace.core import constants, profiles
from podgrace.core.models import (
    GRACEFUL_SIGNAL,
    ContainerMatch,
    ContainerRule,
    ExistingPreStop,
    Role,
    ShutdownProfile,
    ShutdownProfileSpec,
    Signal,
    image_repository,
)
from podgrace.core.profiles import ProfileError

# --- the built-in profiles ----------------------------------------------------------------------------------


def test_builtin_profiles_load(builtin_profiles: dict[str, ShutdownProfile]) -> None:
    assert sorted(builtin_profiles) == ["apache", "nginx", "nginx-php-fpm", "php-fpm", "web"]
    for name, profile in builtin_profiles.items():
        assert profile.name == name
        assert profile.api_version == "podgrace.dev/v1alpha1"
        assert profile.spec.existing_pre_stop is ExistingPreStop.KEEP
        assert profile.spec.grace_period_margin_seconds == 5
        assert profile.spec.description


def test_builtin_documents_are_labelled() -> None:
    docs = list(yaml.safe_load_all(profiles.builtin_text()))
    assert len(docs) == 5
    for doc in docs:
        assert profiles.is_profile(doc)
        assert doc["metadata"]["labels"] == {
            "app.kubernetes.io/part-of": "podgrace",
            "podgrace.dev/builtin": "true",
        }


# (profile, [(rule, role, preStopSleepSeconds, drainSeconds, effective signal, stopAfter)])
BUILTIN_RULES = [
    ("nginx", [("nginx", Role.NGINX, 5, 30, Signal.SIGQUIT, ())]),
    ("php-fpm", [("php-fpm", Role.PHP_FPM, 5, 30, Signal.SIGQUIT, ())]),
    (
        "nginx-php-fpm",
        [
            ("nginx", Role.NGINX, 5, 30, Signal.SIGQUIT, ()),
            ("php-fpm", Role.PHP_FPM, 5, 30, Signal.SIGQUIT, ("nginx",)),
        ],
    ),
    ("apache", [("apache", Role.APACHE, 5, 30, Signal.SIGWINCH, ())]),
    ("web", [("web", Role.GENERIC, 5, 30, None, ())]),
]


@pytest.mark.parametrize(("name", "rules"), BUILTIN_RULES, ids=[r[0] for r in BUILTIN_RULES])
def test_builtin_rules(
    builtin_profiles: dict[str, ShutdownProfile], name: str, rules: list[tuple[Any, ...]]
) -> None:
    got = [
        (r.name, r.role, r.pre_stop_sleep_seconds, r.drain_seconds, r.effective_signal, r.stop_after)
        for r in builtin_profiles[name].spec.containers
    ]
    assert got == rules


@pytest.mark.parametrize("name", ["apache", "nginx", "nginx-php-fpm", "php-fpm", "web"])
def test_builtin_round_trips(builtin_profiles: dict[str, ShutdownProfile], name: str) -> None:
    profile = builtin_profiles[name]
    assert profiles.parse(profile.model_dump(by_alias=True, mode="json")) == profile


# (profile, container name, image, matching rule or None)
BUILTIN_MATCHES = [
    ("nginx", "web", "nginx:1.27", "nginx"),
    ("nginx", "proxy", "registry.example.com/base/nginx-unprivileged:1.27-alpine", "nginx"),
    ("nginx", "nginx", "busybox", "nginx"),  # by container name
    ("nginx", "app", "php:8.3-fpm", None),
    ("php-fpm", "app", "php:8.3-fpm", "php-fpm"),
    ("php-fpm", "app", "php:8.3-fpm-alpine@sha256:" + "a" * 64, "php-fpm"),
    ("php-fpm", "fpm", "ghcr.io/acme/app:1.0", "php-fpm"),
    ("php-fpm", "app", "php:8.3-cli", None),
    ("php-fpm", "app", "php:8.3-apache", None),
    ("apache", "web", "httpd:2.4", "apache"),
    ("apache", "web", "php:8.3-apache", "apache"),  # mod_php
    ("apache", "web", "nginx:1.27", None),
    ("nginx-php-fpm", "nginx", "nginx:1.27", "nginx"),
    ("nginx-php-fpm", "php", "php:8.3-fpm", "php-fpm"),
    ("web", "anything", "", "web"),
]


@pytest.mark.parametrize(("profile", "name", "image", "rule"), BUILTIN_MATCHES)
def test_builtin_matching(
    builtin_profiles: dict[str, ShutdownProfile], profile: str, name: str, image: str, rule: str | None
) -> None:
    found = builtin_profiles[profile].spec.match(name, image)
    assert (found.name if found else None) == rule


@pytest.mark.parametrize(
    ("profile", "image"),
    [
        ("nginx", "nginx/nginx-prometheus-exporter:1.3"),
        ("php-fpm", "hipages/php-fpm_exporter:2"),
        ("apache", "bitnami/apache-exporter:1"),
    ],
)
def test_builtin_globs_skip_exporter_sidecars(
    builtin_profiles: dict[str, ShutdownProfile], profile: str, image: str
) -> None:
    """An exporter sidecar must not get the server's signal (a Go program dumps goroutines on SIGQUIT)."""
    assert builtin_profiles[profile].spec.match("exporter", image) is None


@pytest.mark.parametrize(
    ("profile", "image"),
    [
        ("nginx", "nginx:1.27"),
        ("nginx", "docker.io/library/nginx:1.27-alpine"),
        ("nginx", "nginxinc/nginx-unprivileged:1.27"),
        ("php-fpm", "php:8.3-fpm"),
        ("php-fpm", "docker.io/library/php:8.2-fpm-bookworm"),
        ("php-fpm", "bitnami/php-fpm:8.3"),
        ("apache", "httpd:2.4"),
        ("apache", "php:8.3-apache"),
    ],
)
def test_builtin_globs_match_the_servers_images(
    builtin_profiles: dict[str, ShutdownProfile], profile: str, image: str
) -> None:
    assert builtin_profiles[profile].spec.match("server", image) is not None


@pytest.mark.parametrize(
    ("image", "repository"),
    [
        ("nginx", "nginx"),
        ("nginx:1.27", "nginx"),
        ("reg.example.com:5000/ns/nginx:1.27", "reg.example.com:5000/ns/nginx"),
        ("reg.example.com:5000/ns/nginx", "reg.example.com:5000/ns/nginx"),
        ("nginx@sha256:abc", "nginx"),
        ("reg/ns/nginx:1.27@sha256:abc", "reg/ns/nginx"),
        ("", ""),
    ],
)
def test_image_repository(image: str, repository: str) -> None:
    assert image_repository(image) == repository


def test_match_patterns_see_reference_and_repository() -> None:
    match = ContainerMatch(images=("nginx",))
    assert match.matches("x", "nginx:1.27")
    assert not match.matches("x", "docker.io/library/nginx:1.27")  # the pattern is not anchored to the name
    assert ContainerMatch(images=("*/nginx",)).matches("x", "docker.io/library/nginx:1.27")
    assert ContainerMatch(containerNames=("web",)).matches("web", "")
    assert not ContainerMatch(containerNames=("web",)).matches("Web", "")


def test_first_rule_wins_in_profile_order() -> None:
    spec = ShutdownProfileSpec.model_validate(
        {
            "containers": [
                {"name": "a", "match": {"images": ["*php*"]}, "role": "generic"},
                {"name": "b", "match": {"images": ["*php*fpm*"]}, "role": "php-fpm"},
            ]
        }
    )
    rule = spec.match("app", "php:8.3-fpm")
    assert rule is not None and rule.name == "a"


def test_effective_signal_defaults_to_the_roles_graceful_one() -> None:
    for role in Role:
        rule = ContainerRule.model_validate({"name": "r", "match": {"images": ["*"]}, "role": role.value})
        assert rule.effective_signal == GRACEFUL_SIGNAL[role]
    generic = ContainerRule.model_validate(
        {"name": "r", "match": {"images": ["*"]}, "role": "generic", "stopSignal": "SIGINT"}
    )
    assert generic.effective_signal is Signal.SIGINT


# --- invalid profiles ---------------------------------------------------------------------------------------


def _profile(*rules: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "podgrace.dev/v1alpha1",
        "kind": "ShutdownProfile",
        "metadata": {"name": "mine"},
        "spec": {"containers": list(rules), **spec},
    }


def _rule(name: str = "web", **fields: Any) -> dict[str, Any]:
    return {"name": name, "match": {"images": ["*"]}, "role": "generic", **fields}


INVALID_PROFILES = [
    pytest.param(
        _profile(_rule("a", stopAfter=["b"]), _rule("b", stopAfter=["a"])),
        "stopAfter forms a cycle: a -> b -> a",
        id="cycle",
    ),
    pytest.param(
        _profile(_rule("a", stopAfter=["c"]), _rule("b", stopAfter=["a"]), _rule("c", stopAfter=["b"])),
        "stopAfter forms a cycle: a -> c -> b -> a",
        id="cycle-of-three",
    ),
    pytest.param(_profile(_rule("a", stopAfter=["a"])), "cannot stop after itself", id="self-cycle"),
    pytest.param(
        _profile(_rule("a", stopAfter=["ghost"])), "stopAfter names unknown rules: ghost", id="unknown-after"
    ),
    pytest.param(
        _profile(_rule(role="nginx", stopSignal="SIGTERM")),
        "role nginx stops gracefully only on SIGQUIT, not SIGTERM",
        id="nginx-sigterm",
    ),
    pytest.param(
        _profile(_rule(role="php-fpm", stopSignal="SIGWINCH")),
        "role php-fpm stops gracefully only on SIGQUIT, not SIGWINCH",
        id="php-fpm-sigwinch",
    ),
    pytest.param(
        _profile(_rule(role="apache", stopSignal="SIGQUIT")),
        "role apache stops gracefully only on SIGWINCH, not SIGQUIT",
        id="apache-sigquit",
    ),
    pytest.param(
        _profile(_rule("web"), _rule("web")),
        "container rule names must be unique, repeated: web",
        id="duplicate",
    ),
    pytest.param(
        _profile({**_rule(), "match": {}}), "match needs containerNames or images", id="empty-match"
    ),
    pytest.param(
        _profile({**_rule(), "match": {"containerNames": [], "images": []}}),
        "match needs containerNames or images",
        id="empty-match-lists",
    ),
    pytest.param(_profile(), "containers", id="no-rules"),
    pytest.param(_profile(_rule(preStopSleepSeconds=-1)), "preStopSleepSeconds", id="negative-sleep"),
    pytest.param(_profile(_rule(drainSeconds=3601)), "drainSeconds", id="drain-too-long"),
    pytest.param(
        _profile(_rule(), gracePeriodMarginSeconds=601), "gracePeriodMarginSeconds", id="margin-too-long"
    ),
    pytest.param(_profile(_rule(drainSecond=10)), "drainSecond", id="typo-field"),
    pytest.param(_profile(_rule(role="varnish")), "role", id="unknown-role"),
    pytest.param(_profile(_rule(stopSignal="SIGKILL")), "stopSignal", id="unknown-signal"),
    pytest.param(_profile(_rule("Web")), "name", id="rule-name-uppercase"),
    pytest.param(_profile(_rule(), existingPreStop="overwrite"), "existingPreStop", id="bad-policy"),
    pytest.param({**_profile(_rule()), "apiVersion": "podgrace.dev/v1"}, "apiVersion", id="bad-api-version"),
    pytest.param({**_profile(_rule()), "metadata": {"name": "Mine"}}, "metadata.name", id="bad-name"),
    pytest.param({k: v for k, v in _profile(_rule()).items() if k != "spec"}, "spec", id="no-spec"),
]


@pytest.mark.parametrize(("document", "words"), INVALID_PROFILES)
def test_invalid_profile(document: dict[str, Any], words: str) -> None:
    with pytest.raises(ProfileError) as raised:
        profiles.parse(document)
    message = str(raised.value)
    name = document["metadata"]["name"]
    assert message.startswith(f"ShutdownProfile {name}: ")
    assert words in message
    assert "Value error," not in message  # pydantic's prefix is dropped


def test_profile_without_metadata_is_named_question_mark() -> None:
    with pytest.raises(ProfileError, match=r"^ShutdownProfile \?: "):
        profiles.parse({"apiVersion": "podgrace.dev/v1alpha1", "kind": "ShutdownProfile", "spec": {}})


def test_profile_named_like_a_dns_subdomain_loads() -> None:
    doc = _profile(_rule())
    doc["metadata"]["name"] = "team.web"
    assert profiles.parse(doc).name == "team.web"


def test_from_documents() -> None:
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"}}
    found = profiles.from_documents([deployment, _profile(_rule()), None, "text"])
    assert list(found) == ["mine"]
    with pytest.raises(ProfileError, match="ShutdownProfile mine is defined twice"):
        profiles.from_documents([_profile(_rule()), _profile(_rule("other"))])


def test_generic_role_may_name_any_signal() -> None:
    for signal in Signal:
        profile = profiles.parse(_profile(_rule(stopSignal=signal.value)))
        assert profile.spec.containers[0].effective_signal is signal


def test_profiles_are_immutable() -> None:
    profile = profiles.parse(_profile(_rule()))
    with pytest.raises(ValueError, match="frozen"):
        profile.spec.containers[0].drain_seconds = 1  # type: ignore[misc]


# --- agreement with the CRD ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def crd_spec(repo_root: Path) -> dict[str, Any]:
    crd = yaml.safe_load(
        (repo_root / "crds" / "shutdownprofiles.podgrace.dev.yaml").read_text(encoding="utf-8")
    )
    assert crd["spec"]["group"] == constants.GROUP
    assert crd["spec"]["names"]["kind"] == constants.PROFILE_KIND
    assert crd["spec"]["names"]["plural"] == constants.PROFILE_PLURAL
    (version,) = crd["spec"]["versions"]
    assert version["name"] == constants.VERSION
    spec: dict[str, Any] = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return spec


def _rule_schema(crd_spec: dict[str, Any]) -> dict[str, Any]:
    rule: dict[str, Any] = crd_spec["properties"]["containers"]["items"]
    return rule


def test_crd_enums_equal_python_enums(crd_spec: dict[str, Any]) -> None:
    rule = _rule_schema(crd_spec)["properties"]
    assert rule["role"]["enum"] == [r.value for r in Role]
    assert rule["stopSignal"]["enum"] == [s.value for s in Signal]
    assert crd_spec["properties"]["existingPreStop"]["enum"] == [p.value for p in ExistingPreStop]


def test_crd_defaults_equal_model_defaults(crd_spec: dict[str, Any]) -> None:
    spec_props = crd_spec["properties"]
    rule_props = _rule_schema(crd_spec)["properties"]
    spec_fields = ShutdownProfileSpec.model_fields
    rule_fields = ContainerRule.model_fields
    assert spec_props["existingPreStop"]["default"] == spec_fields["existing_pre_stop"].default.value
    assert (
        spec_props["gracePeriodMarginSeconds"]["default"]
        == spec_fields["grace_period_margin_seconds"].default
    )
    assert rule_props["preStopSleepSeconds"]["default"] == rule_fields["pre_stop_sleep_seconds"].default
    assert rule_props["drainSeconds"]["default"] == rule_fields["drain_seconds"].default
    # a minimal profile, as the API server would store it after defaulting, equals the Python defaults
    minimal = profiles.parse(_profile({"name": "web", "match": {"images": ["*"]}, "role": "generic"}))
    defaulted = copy.deepcopy(_profile({"name": "web", "match": {"images": ["*"]}, "role": "generic"}))
    for prop, schema in spec_props.items():
        if "default" in schema:
            defaulted["spec"][prop] = schema["default"]
    for prop, schema in rule_props.items():
        if "default" in schema:
            defaulted["spec"]["containers"][0][prop] = schema["default"]
    assert profiles.parse(defaulted) == minimal


def _resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in schema:
        resolved = root["$defs"][schema["$ref"].rsplit("/", 1)[1]]
        return {**resolved, **{k: v for k, v in schema.items() if k != "$ref"}}
    if "anyOf" in schema:  # Optional[X]: the non-null branch
        (branch,) = [s for s in schema["anyOf"] if s.get("type") != "null"]
        return {**_resolve(branch, root), **{k: v for k, v in schema.items() if k != "anyOf"}}
    return schema


KEYWORDS = (
    "default",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "pattern",
    "enum",
)


def _compare(crd: dict[str, Any], model: dict[str, Any], root: dict[str, Any], where: str) -> list[str]:
    model = _resolve(model, root)
    problems = [
        f"{where}: {kw} is {crd[kw]!r} in the CRD, {model.get(kw)!r} in the model"
        for kw in KEYWORDS
        if kw in crd and crd[kw] != model.get(kw)
    ]
    if "required" in crd and set(crd["required"]) != set(model.get("required", ())):
        problems.append(f"{where}: required {crd['required']} vs {model.get('required')}")
    for prop, sub in crd.get("properties", {}).items():
        if prop not in model.get("properties", {}):
            problems.append(f"{where}.{prop}: in the CRD, not in the model")
            continue
        problems += _compare(sub, model["properties"][prop], root, f"{where}.{prop}")
    for prop in model.get("properties", {}):
        if "properties" in crd and prop not in crd["properties"]:
            problems.append(f"{where}.{prop}: in the model, not in the CRD")
    if "items" in crd:
        problems += _compare(crd["items"], model["items"], root, f"{where}[]")
    return problems


def test_crd_schema_keywords_equal_the_models(crd_spec: dict[str, Any]) -> None:
    """Every bound, pattern, enum, default and required list of the CRD's spec is the model's too, and
    both have the same properties (so a profile the API server accepts is one podgrace can load, up to the
    CEL rules, which the model's validators mirror)."""
    root = ShutdownProfileSpec.model_json_schema(by_alias=True)
    assert _compare(crd_spec, root, root, "spec") == []


def test_crd_bounds_equal_constants(crd_spec: dict[str, Any]) -> None:
    rule = _rule_schema(crd_spec)["properties"]
    assert rule["preStopSleepSeconds"]["maximum"] == constants.MAX_SLEEP_SECONDS
    assert rule["drainSeconds"]["maximum"] == constants.MAX_DRAIN_SECONDS
    assert crd_spec["properties"]["gracePeriodMarginSeconds"]["maximum"] == constants.MAX_MARGIN_SECONDS


def test_crd_cel_rules_agree_with_graceful_signals(crd_spec: dict[str, Any]) -> None:
    rules = " ".join(r["rule"] for r in _rule_schema(crd_spec)["x-kubernetes-validations"])
    for role, signal in GRACEFUL_SIGNAL.items():
        if signal is None:
            assert f"'{role.value}'" not in rules
        else:
            assert f"'{role.value}'" in rules and f"'{signal.value}'" in rules


def test_crd_comparison_detects_a_drift(crd_spec: dict[str, Any]) -> None:
    drifted = copy.deepcopy(crd_spec)
    _rule_schema(drifted)["properties"]["drainSeconds"]["default"] = 60
    _rule_schema(drifted)["properties"]["role"]["enum"].append("varnish")
    drifted["properties"]["newField"] = {"type": "string"}
    root = ShutdownProfileSpec.model_json_schema(by_alias=True)
    problems = _compare(drifted, root, root, "spec")
    assert len(problems) == 3, problems
