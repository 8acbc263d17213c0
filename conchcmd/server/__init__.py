"""The Conch services (transport, userauth, connection, factory) and what they own: admission of clients,
liveness, the authentication log lines. Imports every layer below, never the edge."""
