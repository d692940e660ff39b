"""Dataset builders: embedded offline defaults, and online loaders that fail with a clear
message."""
