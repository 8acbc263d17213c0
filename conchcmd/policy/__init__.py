"""Who may log in and with what: authorized_keys, certificates and revocation, and the cred checkers that
apply them. Imports core and keys, never the wire or the commands."""
