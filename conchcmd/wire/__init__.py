"""The SSH wire: packet protection, the framing mixin over Conch's transport, the per-phase dispatch table,
host keys, and the one module that names Conch's private internals. Imports core and keys."""
