"""`cdcflow schema generate | check`: the event contract (cdc/contract.py) against the committed file.

Exit codes: 0 compatible (check) or written (generate); 1 an incompatible change (each one named), or with
`check --strict` a contract that is not up to date; 2 a contract that cannot be read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cdc import contract as c
from cdc.settings import REPO_ROOT

app = typer.Typer(help="The event contract: JSON Schema of the envelope and every payload, and its check.",
                  no_args_is_help=True)

ContractOpt = Annotated[
    Path,
    typer.Option("--contract", help="The committed contract (default: schemas/events.schema.json in the checkout).",
                 dir_okay=False),
]
DEFAULT_CONTRACT = REPO_ROOT / c.CONTRACT_FILE


def _report(changes: list[c.Change]) -> None:
    for change in changes:
        typer.echo(f"  {change}")


@app.command("check")
def check(
    contract: ContractOpt = DEFAULT_CONTRACT,
    strict: Annotated[
        bool, typer.Option("--strict", help="Also fail when the committed contract is not up to date (CI).")
    ] = False,
) -> None:
    """Compare the events the code defines with the committed contract; fail on an incompatible change.

    Incompatible: a removed or renamed field or event type, a type change, a new required field, a narrowed limit
    (shorter maxLength, lower maximum, a new pattern ...). Compatible: new optional fields and event types, widened
    limits. After a compatible change, regenerate the contract with `cdcflow schema generate --write`.
    """
    try:
        committed = c.load(contract)
        changes = c.compare(committed, c.generate())
    except c.ContractError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None
    bad = c.incompatible(changes)
    if bad:
        typer.secho(f"{len(bad)} incompatible change(s) against {contract}:", fg="red", err=True)
        for change in bad:
            typer.secho(f"  {change}", fg="red", err=True)
        if len(changes) > len(bad):
            typer.echo("and compatible ones:", err=True)
            for change in changes:
                if change.compatible:
                    typer.echo(f"  {change}", err=True)
        typer.echo("Keep the old fields and limits (add new optional ones instead), or make a new event type.",
                   err=True)
        raise typer.Exit(1)
    if changes:
        typer.echo(f"compatible with {contract}; {len(changes)} change(s) not in it yet:")
        _report(changes)
        typer.echo("regenerate it with `cdcflow schema generate --write` and commit it")
        if strict:
            raise typer.Exit(1)
        return
    if strict and contract.read_text(encoding="utf-8") != c.render(c.generate()):
        typer.echo(f"{contract} is not as `cdcflow schema generate` writes it (descriptions, order): regenerate it")
        raise typer.Exit(1)
    typer.echo(f"the events match {contract}")


@app.command("generate")
def generate(
    write: Annotated[bool, typer.Option("--write", help="Write the contract file instead of printing it.")] = False,
    contract: ContractOpt = DEFAULT_CONTRACT,
    allow_incompatible: Annotated[
        bool,
        typer.Option("--allow-incompatible",
                     help="With --write: replace a contract even when the change is incompatible (a breaking "
                          "release: say so in the CHANGELOG and bump cdc.event.SCHEMA_VERSION)."),
    ] = False,
) -> None:
    """Print the contract of the code (JSON Schema, 2020-12), or write it with --write.

    --write refuses an incompatible change against the file it replaces unless --allow-incompatible is given.
    """
    new = c.generate()
    text = c.render(new)
    if not write:
        typer.echo(text, nl=False)
        return
    if contract.exists():
        try:
            bad = c.incompatible(c.compare(c.load(contract), new))
        except c.ContractError as exc:
            typer.secho(f"error: {exc}", fg="red", err=True)
            raise typer.Exit(2) from None
        if bad and not allow_incompatible:
            typer.secho(f"refusing to write {contract}: {len(bad)} incompatible change(s):", fg="red", err=True)
            for change in bad:
                typer.secho(f"  {change}", fg="red", err=True)
            typer.echo("pass --allow-incompatible for a deliberate breaking change", err=True)
            raise typer.Exit(1)
    contract.parent.mkdir(parents=True, exist_ok=True)
    contract.write_text(text, encoding="utf-8")
    typer.echo(f"wrote {contract}")
