"""One self-contained module per task. They are imported lazily, through `hfpipes.registry`."""
