"""An authenticated user's session: the realm (avatar), the session channel, the interactive shell with its
line editor, completion and cell widths. Imports core, wire, policy and commands."""
