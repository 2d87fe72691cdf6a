"""The pharmacy console: a web UI served beside the HTTP API (docs/console.md)."""

from controller.console.app import install_console

__all__ = ["install_console"]
