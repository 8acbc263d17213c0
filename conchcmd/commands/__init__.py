"""The ops commands: the command framework (tables, admission, dispatcher), lastlog, comphash, the
built-ins, and safe path resolution. Imports only core, never the wire or the policy."""
