"""The only code that talks to Kubernetes API servers: the hub and each member cluster."""
