"""``python -m exo2micro``: the same as the ``exo2micro`` command."""

from exo2micro.cli.main import cli

if __name__ == "__main__":
    cli(prog_name="exo2micro")
