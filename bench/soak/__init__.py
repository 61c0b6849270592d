"""The fault-injection soak (issue 12, "never harm a workload"): opted-in Deployments under user churn
while a fault proxy between podgrace and the API server injects latency, resets, lost answers, 429s with
Retry-After and 503s, plus an API server restart and an etcd restart; then podgrace must have converged
on exactly what `podgrace render` says, with writes near the minimum. See README.md."""
