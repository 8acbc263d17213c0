"""The operator's edge: the command line, the service (start, reload, stop), the twistd plugin's maker,
doctor, the user commands, the shipped files and config diffs. Above the wiring (conchcmd.app); nothing
imports it but __main__ and the twistd plugin."""
