"""The command line: `studio convert | inspect | roles | app | batch` (`commands`), its flags declared as
data (`flags`), and what it prints (`text`). The console script `studio` and `python -m studio` call `entry`.
"""

from studio.cli.commands import entry, main

__all__ = ["entry", "main"]
