"""Tool-call formats: one parser engine (`node.output.scanner`) driven by per-format specs."""
