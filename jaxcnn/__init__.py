"""jaxcnn: a JAX-native CNN framework (placeholder, filled in by the foundation work)."""
