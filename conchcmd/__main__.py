from conchcmd.edge.cli import run

run()
