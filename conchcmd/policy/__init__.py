"""Who may log in and with what: key files, security keys, authorized_keys, certificates and revocation,
and the cred checkers that apply them. Imports only core."""
