"""The configuration: the typed schema of every key, the YAML presets and overrides that fill it, the stage CLI."""
