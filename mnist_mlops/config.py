"""Where the project lives and how its Hydra config is found.

Every entrypoint composes from the same ``conf/`` tree. The tree is looked up from the
working directory first (so a copy of the project, e.g. a DVC test repo, uses its own
config and writes its own outputs), then next to the installed package.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

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


def entry_config_groups(_root_: Any) -> str:
    """``--help``: the config groups THIS entrypoint composes, each with its options.

    Hydra's own ``$APP_CONFIG_GROUPS`` lists every group of the shared tree, so ``register
    --help`` offered ``model=`` and ``backend=``; the groups an entry composes are the ones its
    defaults list chose (``hydra.runtime.choices``), read here when the help text is built.
    """
    choices = _root_.hydra.runtime.choices
    lines = []
    for key in sorted({str(k).split("@")[0] for k in choices}):
        group_dir = Path(CONFIG_DIR) / key
        if key == "hydra" or key.startswith("hydra/") or not group_dir.is_dir():
            continue
        chosen = next(v for k, v in choices.items() if str(k).split("@")[0] == key)
        options = ", ".join(sorted(p.stem for p in group_dir.glob("*.yaml")))
        lines.append(f"{key}: {options}  (now: {chosen if chosen is not None else 'none'})")
    return "\n".join(lines)


# interpolations that name a place rather than a setting (kept as written where a config is
# recorded, so the record is the same in every clone of the project)
LOCATION_MARKERS = ("paths.", "oc.env", "hydra:", "project_root", "now:")


def resolved_once(cfg: DictConfig, keep_symbolic: tuple[str, ...] = ()) -> dict[str, Any]:
    """The config as plain data with every group once (for MLflow params and printed configs).

    A node that references a whole group (``logger.registry: ${registry}``,
    ``backend.spark: ${spark}``) is how a constructor gets that group without a copy in the
    YAML; it stays the reference text here instead of being resolved into a second copy.
    Everything else is resolved; a missing mandatory value stays ``???``. A leaf whose
    interpolation mentions one of ``keep_symbolic`` (e.g. ``paths.``, ``oc.env``) stays as
    written too: a location, not a setting, the same in every clone of the project.
    """
    raw = OmegaConf.to_container(cfg, resolve=False)
    out: dict[str, Any] = {}
    for key in cfg:
        if OmegaConf.is_missing(cfg, key):
            out[str(key)] = "???"
            continue
        value = cfg[key]
        if isinstance(value, DictConfig | ListConfig) and OmegaConf.is_interpolation(cfg, key):
            out[str(key)] = raw[key]  # a reference to another group: "${registry}"
        elif (
            keep_symbolic
            and OmegaConf.is_interpolation(cfg, key)
            and any(marker in str(raw[key]) for marker in keep_symbolic)
        ):
            out[str(key)] = raw[key]
        elif isinstance(value, DictConfig):
            out[str(key)] = resolved_once(value, keep_symbolic)
        elif isinstance(value, ListConfig):
            out[str(key)] = OmegaConf.to_container(value, resolve=True)
        else:
            out[str(key)] = value
    return out


def register_resolvers() -> None:
    """Resolvers used by the YAML files; idempotent so tests can compose repeatedly."""
    if not OmegaConf.has_resolver("project_root"):
        OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT))
    if not OmegaConf.has_resolver("entry_config_groups"):
        OmegaConf.register_new_resolver("entry_config_groups", entry_config_groups)


register_resolvers()
