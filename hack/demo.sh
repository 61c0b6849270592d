#!/usr/bin/env bash
# podgrace's main job, end to end on a local control plane (no Docker, nothing from outside the package
# registries): build the cluster binaries if missing (cached; ~20 min cold on 2 cores), start etcd +
# kube-apiserver + controller-manager + scheduler + kwok, install the Helm chart, run podgrace with the
# chart's ServiceAccount, opt in examples/php-fpm-deployment.yaml and show what was injected and the
# rollout. The cluster stays up until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c "import podgrace" 2>/dev/null || python3 -m pip install -q -e .
python3 -c "import cryptography" 2>/dev/null || python3 -m pip install -q cryptography
bash tests/cluster/build.sh >/dev/null
exec python3 -m hack.demo "$@"
