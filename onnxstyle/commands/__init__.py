"""The commands, one module each, over the library; ``options`` is what they share. A command
imports ``options`` and the library below it, never another command or the CLI."""
