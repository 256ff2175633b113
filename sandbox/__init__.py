"""sandbox: every AI coding agent in its own Docker container.

This module stays import-light: it is also copied into the agent image, where only the
standard library exists (see ``sandbox.inside`` and ``sandbox.inside.mockmodel``).
"""

__version__ = "0.1.0"
