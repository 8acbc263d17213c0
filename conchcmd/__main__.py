from conchcmd.cli import run

run()
