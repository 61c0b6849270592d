"""The controller: the Kubernetes API client, the Deployment informer and work queue, the reconciler,
Events, metrics and the Kopf wiring of `podgrace run`. It calls the pure core to decide what to write.
"""
