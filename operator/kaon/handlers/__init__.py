"""The operator: kopf handlers on the hub and the engine that applies kaon's decisions."""
