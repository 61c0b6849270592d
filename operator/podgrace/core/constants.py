"""Names shared by the operator, the CLI and the chart: the public contract."""

GROUP = "podgrace.dev"
VERSION = "v1alpha1"
PROFILE_PLURAL = "shutdownprofiles"
PROFILE_KIND = "ShutdownProfile"
FIELD_MANAGER = "podgrace"

ANNOTATION_PREFIX = "podgrace.dev/"
ANN_PROFILE = ANNOTATION_PREFIX + "profile"
ANN_MODE = ANNOTATION_PREFIX + "mode"
ANN_PRESTOP_SLEEP = ANNOTATION_PREFIX + "prestop-sleep-seconds"
ANN_DRAIN = ANNOTATION_PREFIX + "drain-seconds"
ANN_GRACE = ANNOTATION_PREFIX + "termination-grace-period-seconds"
ANN_CONTAINERS = ANNOTATION_PREFIX + "containers"
ANN_EXISTING_PRESTOP = ANNOTATION_PREFIX + "existing-prestop"
# "true": none of the containers podgrace touches has /bin/sh; "false": all may have one (overrides the
# built-in knowledge of shell-less images); else the comma-separated names of those without a shell.
ANN_NO_SHELL = ANNOTATION_PREFIX + "no-shell"
# podgrace's own bookkeeping (written by the operator, in the same apply that replaces a user's hook): the
# hooks it replaced and their field managers, JSON {container: {"manager": ..., "preStop": {...}}}, so an
# opt-out restores them even after an operator restart. Not an input: users do not set it.
ANN_REPLACED_PRESTOP = ANNOTATION_PREFIX + "replaced-prestop"

KNOWN_ANNOTATIONS = frozenset(
    {
        ANN_PROFILE,
        ANN_MODE,
        ANN_PRESTOP_SLEEP,
        ANN_DRAIN,
        ANN_GRACE,
        ANN_CONTAINERS,
        ANN_EXISTING_PRESTOP,
        ANN_NO_SHELL,
        ANN_REPLACED_PRESTOP,
    }
)

# The longest podgrace annotation value podgrace reads (a longer one is an InvalidAnnotation error and is
# not parsed), and the most of a value an error message quotes: what a user writes into an annotation
# never ends up, whole, in podgrace's memory or its Events.
MAX_ANNOTATION_VALUE = 1024
MAX_QUOTED_VALUE = 64
# The most unknown `podgrace.dev/...` annotations one error names (the rest are counted).
MAX_NAMED_UNKNOWN = 5

# Bounds shared with the CRD schema (crds/) so annotations and profiles agree.
MAX_SLEEP_SECONDS = 3600
MAX_DRAIN_SECONDS = 3600
MAX_MARGIN_SECONDS = 600
MAX_GRACE_SECONDS = 86400

# The API server's default terminationGracePeriodSeconds.
KUBERNETES_DEFAULT_GRACE = 30

# Marks the exec hooks podgrace writes so a rendered manifest can be recognised as podgrace's own.
HOOK_MARKER = "# podgrace graceful stop"
