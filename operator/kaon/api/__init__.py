"""The API layer: pydantic models of every kaon resource (the source of the CRD schemas) and
the vocabulary: names, labels, annotations, resource quantities."""
