"""`pbxrelay sandbox` and `pbxrelay demo`: the fake vendors, for trying pbxrelay with nothing real."""

from __future__ import annotations

import click

from service.cli.base import main

# --- sandbox -----------------------------------------------------------------------------------------

@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=9000, show_default=True, type=click.IntRange(0, 65535),
              help="First port: VirtualPBX; the other stand-ins take the next ports (0: any free ports).")
def sandbox(host: str, port: int) -> None:
    """Run a local VirtualPBX and every vendor stand-in, and print the settings that point pbxrelay at them."""
    from service.sandbox import run

    run(host, port)


@main.command()
@click.option("--calls", default=12, show_default=True, type=click.IntRange(1, 500), help="Calls to simulate.")
@click.option("--seed", default=1, show_default=True, type=int, help="Seed of the simulated calls.")
@click.option("--keep", is_flag=True, help="Leave the sandbox and the service running until Ctrl-C.")
def demo(calls: int, seed: int, keep: bool) -> None:
    """Run the sandbox and the service, play a morning of calls and CRM events, and write var/demo/report.html."""
    from service.sandbox.demo import DemoError
    from service.sandbox.demo import run as run_demo

    try:
        run_demo(calls=calls, seed=seed, keep=keep)
    except DemoError as exc:
        raise click.ClickException(str(exc)) from None
