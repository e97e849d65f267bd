"""`python -m service.cli`: the same as the `pbxrelay` command."""

from service.cli import main

main()
