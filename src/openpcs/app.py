"""Assembles a running openpcs from its options: store, keys, runtime and reconciler; and each worker's API."""

from __future__ import annotations

import os
import random
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .api.credentials import PROFILE, KeyCache, create_key, list_keys, write_credentials_file
from .api.dispatch import Dispatcher
from .api.model import load_service
from .api.pagination import PageTokens
from .api.server import ApiApp, Frontend
from .api.sigv4 import SigV4Verifier
from .control.draining import DEFAULT_DRAIN_TIMEOUT_SECONDS
from .control.reconciler import Reconciler
from .control.runtime import Runtime
from .control.scaling import PROTECTED_MODE_COOLDOWN_SECONDS
from .domain import hyperpod
from .layout import DataLayout
from .pcs.handlers import PcsHandlers, ServiceContext
from .pcs.views import Views
from .sagemaker.handlers import SageMakerHandlers
from .slurm.builds import Catalog
from .store.db import Store, sqlite_url

DEFAULT_REGION = "us-east-1"
DEFAULT_MAX_CLUSTERS = 5
# One API worker process a core (a Python process serves about one core's worth), capped: each costs memory.
DEFAULT_WORKERS = min(4, os.cpu_count() or 1)


def default_data_dir() -> Path:
    if os.environ.get("OPENPCS_DATA_DIR"):
        return Path(os.environ["OPENPCS_DATA_DIR"])
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "openpcs"


def open_store(data_dir: Path, database: str | None) -> Store:
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    return Store(database or sqlite_url(str(data_dir / "openpcs.db")))


@dataclass
class Identity:
    """Who this service is in ARNs, fixed at first start and kept in the store."""

    region: str
    account: str


def identity(store: Store, region: str | None) -> Identity:
    stored_region = store.setting("region", lambda: region or DEFAULT_REGION)
    account = store.setting("account", lambda: str(random.SystemRandom().randrange(10**11, 10**12)))
    return Identity(stored_region, account)


def ensure_credentials(store: Store, data_dir: Path, region: str) -> Path:
    """On first start, make a key and write it to DATA_DIR/credentials (profile `openpcs`, mode 0600)."""
    path = data_dir / "credentials"
    if not path.exists():
        usable = [k for k in list_keys(store) if k.revoked_at is None and k.description == "default"]
        key = usable[0] if usable else create_key(store, "default")
        write_credentials_file(path, key, region, PROFILE)
    return path


def page_token_key(store: Store) -> bytes:
    return bytes.fromhex(store.setting("page_token_key", lambda: secrets.token_hex(32)))


class Service:
    """The supervisor's part of `openpcs serve`: the store's first-start setup, the runtime and the reconciler.

    The API itself runs in worker processes (build_api); this process owns everything that must exist once.
    """

    def __init__(self, data_dir: Path, database: str | None, region: str | None, api_url: str, slurm: Catalog,
                 drain_timeout: float = DEFAULT_DRAIN_TIMEOUT_SECONDS,
                 protected_mode_cooldown: float = PROTECTED_MODE_COOLDOWN_SECONDS,
                 accounting_database: str | None = None, object_store_url: str | None = None) -> None:
        self.data_dir = data_dir
        self.store = open_store(data_dir, database)
        self.identity = identity(self.store, region)
        if region and region != self.identity.region:
            raise SystemExit(f"This data dir serves region {self.identity.region}; it cannot change to {region}.")
        self.credentials_path = ensure_credentials(self.store, data_dir, self.identity.region)
        page_token_key(self.store)  # made here, once, so that workers only ever read it
        self.runtime = Runtime(data_dir, self.store, self.identity.region, self.identity.account, api_url, slurm,
                               drain_timeout, protected_mode_cooldown, accounting_database, object_store_url)
        self.reconciler = Reconciler(self.store, self.runtime)

    def start(self) -> None:
        self.reconciler.start()

    def stop(self) -> None:
        self.reconciler.stop()
        self.store.close()


def build_api(data_dir: Path, database: str | None, max_clusters: int, scheduler_versions: list[str],
              after_write: Callable[[], None]) -> tuple[ApiApp, Store]:
    """The API one worker process serves, on its own connections to the store the supervisor set up.
    `scheduler_versions` are the Slurm versions this server runs (a build, or a mapping onto one)."""
    store = open_store(data_dir, database)
    who = identity(store, None)
    context = ServiceContext(views=Views(who.region, who.account), tokens=PageTokens(page_token_key(store)),
                             max_clusters=max_clusters, shared_secret=DataLayout(data_dir).shared_secret,
                             scheduler_versions=tuple(scheduler_versions))
    pcs = Frontend(load_service("pcs"), Dispatcher(store, PcsHandlers(context), after_write=after_write))
    sagemaker = Frontend(load_service("sagemaker"),
                         Dispatcher(store, SageMakerHandlers(context), after_write=after_write,
                                    client_error_status=hyperpod.STATUS))
    keys = KeyCache(store)
    return ApiApp([pcs, sagemaker], SigV4Verifier(keys.secret, region=who.region), keys.scope), store
