"""Where the project lives and how its Hydra config is found.

Every entrypoint composes from the same ``conf/`` tree. The tree is looked up from the
working directory first (so a copy of the project, e.g. a DVC test repo, uses its own
config and writes its own outputs), then next to the installed package.
"""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf

ROOT_ENV_VAR = "MNIST_MLOPS_ROOT"
_MARKER = Path("conf") / "paths" / "default.yaml"


def find_project_root() -> Path:
    """The directory holding ``conf/``: $MNIST_MLOPS_ROOT, else cwd or a parent, else the repo."""
    if env_root := os.environ.get(ROOT_ENV_VAR):
        return Path(env_root).resolve()
    cwd = Path.cwd().resolve()
    for candidate in (cwd, *cwd.parents):
        if (candidate / _MARKER).is_file():
            return candidate
    return Path(__file__).resolve().parent.parent


PROJECT_ROOT = find_project_root()
CONFIG_DIR = str(PROJECT_ROOT / "conf")


def register_resolvers() -> None:
    """Resolvers used by the YAML files; idempotent so tests can compose repeatedly."""
    if not OmegaConf.has_resolver("project_root"):
        OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT))


register_resolvers()
