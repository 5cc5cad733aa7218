"""One controller per kind: observe, ask a pure decision what to do, do it, write status."""
