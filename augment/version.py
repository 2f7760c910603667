"""The package version, in one place (the facade, the CLI and the manifests read it)."""

__version__ = "0.3.0"
