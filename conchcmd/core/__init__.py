"""The ground floor: configuration, the audit and log targets, file trust, address patterns, listening
endpoints, thread runners and the typed contracts (flow, peer) every layer above may use. Imports
nothing else of conchcmd."""
