"""SSH key formats, below both the wire and the policy: key-file text as sshd reads it (keyfile), the one
public- and private-key parser raising one error (keyparse), security keys (sk). Imports only core."""
