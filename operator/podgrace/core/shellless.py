"""Containers without /bin/sh: podgrace's exec hooks (the signal-and-wait fallback, the exec sleep) fail at
once there with FailedPreStopHook (e.g. kubernetes-csi/csi-driver-host-path#175, linkerd/linkerd2#6723), so
the planner writes only native forms into them.

Known from the image reference (the bases below, matched with the profiles' tag-aware globs,
models.image_matches) or declared with the `podgrace.dev/no-shell` annotation, which wins.
"""

from __future__ import annotations

from dataclasses import dataclass

from podgrace.core.constants import ANN_NO_SHELL
from podgrace.core.models import ContainerView, Overrides, image_matches


@dataclass(frozen=True)
class ShelllessBase:
    name: str
    images: tuple[str, ...]  # globs of the family's images
    with_shell: tuple[str, ...] = ()  # globs of its variants that do have a shell


SHELLLESS_BASES = (
    # Google's distroless (gcr.io/distroless/static, base, cc, java*, python3, nodejs*; mirrors such as
    # ghcr.io/ORG/distroless-static-debian12): no shell; their `:debug` and `:debug-nonroot` tags add
    # busybox's sh (GoogleContainerTools/distroless README, "Debug images"). Microsoft's Azure Linux
    # distroless variants are tags: mcr.microsoft.com/dotnet/aspnet:10.0-azurelinux3.0-distroless.
    ShelllessBase(
        "distroless",
        ("gcr.io/distroless/*", "*/distroless*", "distroless*", "*:*distroless*"),
        ("*:*debug*",),
    ),
    # Chainguard: "standard images do not contain ... shells such as b/a/sh"; the development variants,
    # tagged `:latest-dev` (and `-dev` versions, `latest-fpm-dev`), do (edu.chainguard.dev, "Differences
    # between development and production images"). Images are cgr.dev/chainguard/NAME or cgr.dev/ORG/NAME.
    ShelllessBase("Chainguard", ("cgr.dev/*",), ("*:*-dev", "*:*-dev-*")),
    # Ubuntu chiselled images (mcr.microsoft.com/dotnet/runtime-deps:8.0-jammy-chiseled, ubuntu/dotnet-*):
    # "no package manager, no shell" (dotnet/dotnet-docker, Ubuntu Chiseled + .NET).
    ShelllessBase("Ubuntu chiselled", ("*:*chiseled*", "ubuntu/dotnet-*", "*/ubuntu/dotnet-*")),
)


def known_shellless(image: str) -> str | None:
    """The shell-less base an image reference names (for messages), None: not one podgrace knows."""
    for base in SHELLLESS_BASES:
        if any(image_matches(image, p) for p in base.images) and not any(
            image_matches(image, p) for p in base.with_shell
        ):
            return base.name
    return None


def no_shell_reason(container: ContainerView, overrides: Overrides) -> str | None:
    """Why podgrace takes the container to have no /bin/sh (said in messages); None: it may have one."""
    declared = overrides.no_shell
    if declared is True or (isinstance(declared, frozenset) and container.name in declared):
        return f"{ANN_NO_SHELL} declares no shell in it"
    if declared is False:
        return None
    base = known_shellless(container.image)
    return f"its image {container.image!r} is a {base} image, without a shell" if base else None


def declared_missing(overrides: Overrides, containers: frozenset[str]) -> list[str]:
    """The containers `podgrace.dev/no-shell` names that the pod lacks (an error, like a typo)."""
    declared = overrides.no_shell
    return sorted(declared - containers) if isinstance(declared, frozenset) else []
