"""The rnnkit command line. It parses and dispatches; the work is done by library functions."""

from __future__ import annotations

import click

import rnnkit


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(rnnkit.__version__, prog_name="rnnkit")
def main() -> None:
    """rnnkit: recurrent neural networks on PyTorch."""


@main.command()
@click.option("--seed", default=0, show_default=True, help="Random seed.")
def demo(seed: int) -> None:
    """Check rnnkit against torch.nn, then train the "hello world" character model."""
    from rnnkit import demo as demos

    p = demos.parity(seed=seed)
    click.echo(f"rnnkit vs torch.nn on {p.config}")
    click.echo(f"  largest difference  output {p.output:.1e}  final state {p.final_state:.1e}  "
               f"gradients {p.gradients:.1e}")
    h = demos.hello_world(seed=seed)
    click.echo(f'character LSTM on "{h.text}": {h.steps} steps, loss {h.final_loss:.4f}, {h.seconds:.1f} s')
    click.echo(f'  prompt "{h.prompt}" -> "{h.generated}"')


if __name__ == "__main__":  # pragma: no cover
    main()
