"""An authenticated user's session: the realm (avatar), the session channel, the interactive shell with its
line editor, completion and cell widths. Imports the floors below it (core, keys, wire, policy, commands)."""
