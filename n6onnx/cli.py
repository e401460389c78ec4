"""The ``n6onnx`` command line: thin click commands over n6onnx.api."""

from __future__ import annotations

import json
import sys

import click
from rich.console import Console
from rich.table import Table

from . import api
from .errors import N6Error

err = Console(stderr=True)
out = Console()


def _fail(e: N6Error) -> None:
    err.print(f"[bold red]error:[/] {e}", highlight=False)
    sys.exit(e.exit_code)


@click.group()
@click.version_option(package_name="n6onnx")
def main() -> None:
    """Rewrite ONNX models with the n6 techniques and measure what they really do."""


@main.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON only.")
def inspect(model: str, as_json: bool) -> None:
    """Report the GELU, FFN, attention and MoE subgraphs found in MODEL (with near-misses)."""
    try:
        rep = api.inspect(model)
    except N6Error as e:
        _fail(e)
    if as_json:
        click.echo(json.dumps(rep.to_json(), indent=2))
        return
    out.print(f"[bold]{rep.model}[/]  opset {rep.opset}, {rep.nodes} nodes", highlight=False)
    _kinds_table(rep.kinds, "found")
    _near_misses(rep.kinds)


@main.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Where to write the rewritten model.")
@click.option("--pass", "passes_", multiple=True, required=True, metavar="KIND=OPTION",
              help="A rewrite pass, e.g. gelu=phi6 or gelu=zetaln2. Repeatable.")
@click.option("--external-data/--no-external-data", default=None,
              help="Store tensors in OUTPUT.data (default: when the input did or the model is over 2 GB).")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON only.")
def rewrite(model: str, output: str, passes_: tuple[str, ...], external_data, as_json: bool) -> None:
    """Rewrite MODEL with the given passes and write OUTPUT (atomically; MODEL is never modified)."""
    try:
        _, rep = api.rewrite(model, output, passes_, external_data=external_data)
    except N6Error as e:
        _fail(e)
    if as_json:
        click.echo(json.dumps(rep.to_json(), indent=2))
        return
    out.print(f"[bold]{rep.model}[/] -> [bold]{rep.output}[/]  ({rep.seconds:.2f} s)", highlight=False)
    _kinds_table(rep.reports, "rewritten")
    _near_misses(rep.reports)
    if rep.functions:
        out.print(f"fallback functions attached: {', '.join(rep.functions)}")
    for w in rep.warnings:
        err.print(f"[yellow]warning:[/] {w}", highlight=False)


def _kinds_table(kinds, last: str) -> None:
    t = Table("kind", "seen", "matched", "rejected", last if last != "found" else "rules")
    for k, r in kinds.items():
        if last == "found":
            rules = sorted({s.rule for s in r.sites})
            t.add_row(k, str(r.seen), str(r.found), str(len(r.near_misses)), ", ".join(rules))
        else:
            t.add_row(k, str(r.seen), str(r.found), str(len(r.near_misses)), str(r.rewritten))
    out.print(t)


def _near_misses(kinds) -> None:
    for k, r in kinds.items():
        for m in r.near_misses:
            out.print(f"  [dim]{k} near-miss[/] {m.node}: {m.reason}", highlight=False)


if __name__ == "__main__":  # pragma: no cover
    main()
