"""``python -m mnist_mlops.stage_params``: a DVC stage's params, from the composed config.

DVC decides whether to re-run a stage from the params it lists. A hand-written list of keys
misses whatever it forgot (``conf/local``, ``experiment=``, ``trainer.limit_*``), and then
``dvc.lock`` describes another training than the one that ran. Instead the ``train_params``
stage composes the train config exactly as the train stage's command will (same config name,
same overrides, ``conf/`` as its dependency) and writes the groups that shape the trained model
to a git-ignored YAML file (flat dotted keys), which the train stage lists whole as params:

    python -m mnist_mlops.stage_params train report_dir=reports/train callbacks=console \\
        --keys seed data model trainer selection backend spark --out reports/train/params.yaml

Values are resolved, except locations (``paths.*``, environment variables, Hydra's run
directory), which stay as written so the file is the same in every clone; a group referenced by
another (``backend.spark: ${spark}``) appears once. Only Hydra and OmegaConf are imported.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf, open_dict

from mnist_mlops.config import CONFIG_DIR, LOCATION_MARKERS, resolved_once
from mnist_mlops.exit_codes import ExitCode, bad_input_exits, exit_with
from mnist_mlops.utils.atomic import atomic_write_text

# groups that only some choices pull in (spark: backend=spark_ddp|orca); absent is not an error
_GROUPS_ON_DEMAND = frozenset({"spark"})


def stage_params(config_name: str, overrides: Sequence[str], keys: Sequence[str]) -> str:
    """The YAML text of ``keys`` (top-level; absent ones skipped) of the composed config."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=list(overrides), return_hydra_config=True)
    HydraConfig().set_config(cfg)  # for ${hydra:...}; the hydra node itself is not a param
    with open_dict(cfg):
        del cfg["hydra"]
    unknown = [key for key in keys if key not in cfg and key not in _GROUPS_ON_DEMAND]
    if unknown:
        raise ValueError(f"--keys {unknown} are not keys of the {config_name} config")
    data = resolved_once(cfg, keep_symbolic=LOCATION_MARKERS)
    picked = {key: data[key] for key in keys if key in data}
    return OmegaConf.to_yaml(OmegaConf.create(flatten(picked)), sort_keys=True)


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"trainer.limit_train_batches": 3, ...}``: DVC compares a whole params file key by key
    at the top level, so flat keys make ``dvc status``/``dvc params diff`` name the exact key."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def write_if_changed(path: Path, text: str) -> bool:
    """Write ``text`` atomically unless the file already holds it (its mtime then stays)."""
    if path.is_file() and path.read_text() == text:
        return False
    atomic_write_text(path, text)
    return True


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mnist_mlops.stage_params", description=__doc__)
    parser.add_argument("config_name", help="the entrypoint's config, e.g. train")
    parser.add_argument("overrides", nargs="*", help="the same overrides as the stage's command")
    parser.add_argument("--keys", nargs="+", required=True, help="top-level keys to write")
    parser.add_argument("--out", type=Path, required=True, help="the params file to write")
    args = parser.parse_args(argv)
    with bad_input_exits("stage_params"):
        text = stage_params(args.config_name, args.overrides, args.keys)
    changed = write_if_changed(args.out, text)
    print(f"{args.out}: {'written' if changed else 'unchanged'}", file=sys.stderr)
    exit_with(ExitCode.OK)


if __name__ == "__main__":
    main()
