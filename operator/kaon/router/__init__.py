"""kaon's router: one address for every InferenceService, in front of its replicas in every
cluster. It splits requests between revisions exactly, sends them only to ready replicas, and
holds them while a service scaled to zero gets a replica again (`kaon router`)."""
