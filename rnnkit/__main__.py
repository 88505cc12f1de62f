"""`rnnkit` and `python -m rnnkit`: the command line, which needs rnnkit[cli]."""

from __future__ import annotations

import sys


def main() -> None:
    try:
        import click  # noqa: F401
    except ModuleNotFoundError as error:
        from rnnkit._extras import missing_extra

        print(f"Error: {missing_extra(error)}", file=sys.stderr)
        raise SystemExit(1) from None
    from rnnkit.cli import main as command_line

    command_line(prog_name="rnnkit")


if __name__ == "__main__":
    main()
