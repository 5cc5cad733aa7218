"""Pure functions from kaon's models to Kubernetes objects; the runtime injection lives here."""
