"""Dataset formats, loaders and builders (the embedded demo data lives in data.demo)."""
