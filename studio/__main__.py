from studio.cli.commands import entry

entry()
