"""The local multi-cluster rig: real Kubernetes control planes with kwok node pools."""
