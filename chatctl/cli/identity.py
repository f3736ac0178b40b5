"""Who the token acts as: whoami."""

import typer

from chatctl.cli import plain
from chatctl.cli.context import invocation
from chatctl.cli.options import with_common_options
from chatctl.schema import WHOAMI

app = typer.Typer()


@app.command()
@with_common_options
def whoami(ctx: typer.Context) -> None:
    """Show who the token acts as: its tenant, its user, and whether it is an admin.

    With a user token (tenant=NAME user=ID on a chatctl server) every command acts as
    that user unless --user, CHATCTL_USER or the profile names one. An admin token acts
    as any user of its tenant, as every m3o token did; an open server (no tokens) is one
    admin. Needs chatctl's server: another m3o server cannot say (exit 2).

    Example: chatctl whoami
    Example: chatctl whoami -o json | jq -r .identity.user_id
    """
    inv = invocation(ctx)
    client = inv.client
    if not client.facts(inv.acting_user()).has(WHOAMI):
        raise plain.unsupported(inv, "whoami", WHOAMI)
    out = inv.renderer(batch=False)
    try:
        out.response(client.whoami())
    finally:
        out.close()
