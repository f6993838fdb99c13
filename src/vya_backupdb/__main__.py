"""`python -m vya_backupdb` runs the CLI."""

from vya_backupdb.cli.entry import main

main()
