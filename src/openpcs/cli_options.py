"""Options and helpers the `openpcs` commands share: where the data dir is, and its store."""

from __future__ import annotations

from pathlib import Path

import click

from .app import default_data_dir, open_store
from .domain import ids
from .store import resources as rows
from .store.db import Store
from .store.resources import Resource

data_dir_option = click.option(
    "--data-dir", type=click.Path(path_type=Path), default=None,
    help="Where openpcs keeps its state [default: $OPENPCS_DATA_DIR or ~/.local/share/openpcs].")
database_option = click.option(
    "--database", default=None, metavar="URL", envvar="OPENPCS_DATABASE",
    help="A SQLAlchemy URL, e.g. postgresql+psycopg://user@host/db [default: $OPENPCS_DATABASE, else SQLite in "
         "the data dir]. Prefer the variable for a URL with a password: any user can read a command line.")


def resolve_data_dir(value: Path | None) -> Path:
    return (value or default_data_dir()).expanduser().resolve()


def existing_store(data_dir: Path | None, database: str | None) -> Store:
    """The store of an existing openpcs; never a new, empty one that no server reads (e.g. a mistyped dir)."""
    directory = resolve_data_dir(data_dir)
    if database is None and not (directory / "openpcs.db").exists():
        raise click.ClickException(f"No openpcs data in {directory}. Pass the --data-dir (and --database) that "
                                   "'openpcs serve' uses, or start it once to create them.")
    return open_store(directory, database)


def find_cluster(store: Store, directory: Path, identifier: str) -> Resource:
    """A PCS or HyperPod cluster by name or id, or a message saying how to list them."""
    with store.read() as conn:
        found = (rows.find(conn, ids.CLUSTER, identifier)
                 or rows.find(conn, ids.CLUSTER, identifier, ids.SAGEMAKER_SCOPE)
                 or rows.by_id(conn, identifier))
    if found is None or found.kind != ids.CLUSTER:
        raise click.ClickException(f"No cluster {identifier!r} in this openpcs (data dir {directory}). "
                                   "'aws pcs list-clusters' and 'aws sagemaker list-clusters' list them.")
    return found
