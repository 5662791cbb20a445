"""Typed settings of a retrain, built once from the composed ``retrain`` config.

The retraining code reads these dataclasses, never the raw ``DictConfig``: the config is
checked against them once (OmegaConf structured merge: a missing key, an unknown key or a wrong
type is an error naming the key), and everything after that is plain attributes. The field
names mirror ``conf/retrain.yaml`` one to one.

Child processes (the drift check, the training) are Hydra apps over the same ``conf/`` tree.
They see the same paths, data and registry as the retrain by one rule: every override the
retrain was given for a group named in ``children.shared_groups`` is passed on to them
(:attr:`ChildSettings.overrides`), and they compose the rest from the same YAML and the same
environment. No key is forwarded by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from omegaconf import DictConfig, OmegaConf

TRIGGERS = ("force", "drift", "schedule", "drift_or_schedule")


@dataclass
class ScheduleSettings:
    every_h: float = 168.0


@dataclass
class DriftTriggerSettings:
    """The drift trigger: a waiting alert marker, or a drift check run now as a child."""

    alert_marker: str
    check_now: bool = True
    overrides: list[str] = field(default_factory=list)
    timeout_s: float = 900.0


@dataclass
class FeedbackSettings:
    """Which feedback-labelled predictions become a snapshot (:mod:`.feedback`)."""

    log_dir: str
    dir: str
    enabled: bool = True
    eval_fraction: float = 0.3
    min_eval: int = 50
    allow_untrusted: bool = False
    max_untrusted_fraction: float = 0.1


@dataclass
class TrainSettings:
    overrides: list[str] = field(default_factory=list)
    timeout_s: float = 7200.0


@dataclass
class GateSettings:
    eval_split_dir: str


@dataclass
class WatchSettings:
    enabled: bool = False
    interval_s: float = 3600.0
    max_cycles: int | None = None


@dataclass
class DrillSettings:
    """Kill drills and tests: sleep ``pause_s`` before step ``pause_before``."""

    pause_before: str | None = None
    pause_s: float = 0.0


@dataclass
class RegistrySettings:
    """The ``registry`` group (``conf/registry/*.yaml``)."""

    tracking_uri: str
    experiment_name: str
    model_name: str
    champion_alias: str
    challenger_alias: str
    artifact_location: str | None = None
    # alpha, min_effect, min_accuracy: checked (and defaulted) by tracking.registry.GateRule
    gate: dict[str, float] = field(default_factory=dict)

    def as_config(self) -> DictConfig:
        """The group as :mod:`mnist_mlops.tracking` takes it (attribute and ``.get`` access)."""
        return OmegaConf.structured(self)


@dataclass
class ChildSettings:
    """What child entrypoints share with the retrain: the overrides of these groups."""

    shared_groups: list[str] = field(default_factory=lambda: ["paths", "data", "registry"])
    # filled by RetrainSettings.from_config, not by YAML
    overrides: list[str] = field(default_factory=list)


@dataclass
class RetrainSettings:
    """Everything one retrain cycle (and the watch loop around it) reads."""

    registry: RegistrySettings
    drift: DriftTriggerSettings
    feedback: FeedbackSettings
    gate: GateSettings
    work_dir: str
    state_path: str
    report_path: str
    lock_path: str
    trigger: str = "drift"
    schedule: ScheduleSettings = field(default_factory=ScheduleSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    watch: WatchSettings = field(default_factory=WatchSettings)
    drill: DrillSettings = field(default_factory=DrillSettings)
    children: ChildSettings = field(default_factory=ChildSettings)

    def __post_init__(self) -> None:
        if self.trigger not in TRIGGERS:
            raise ValueError(f"trigger={self.trigger!r} is not one of {TRIGGERS}")

    @classmethod
    def from_config(cls, cfg: DictConfig, overrides: list[str] | None = None) -> RetrainSettings:
        """Check and convert the composed ``retrain`` config (resolved here, once).

        ``overrides`` are the ones the retrain was started with; by default they are taken
        from the config's ``hydra`` node (compose with ``return_hydra_config=True``) or from
        the running Hydra app. Only those of ``children.shared_groups`` are kept for children.
        """
        values = {
            key: OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
            for key in cls.__dataclass_fields__
            if (node := cfg.get(key)) is not None
        }
        schema = OmegaConf.structured(cls)
        merged = OmegaConf.merge(schema, values)
        settings: RetrainSettings = OmegaConf.to_object(merged)  # type: ignore[assignment]
        given = overrides if overrides is not None else launch_overrides(cfg)
        if given is None:
            raise ValueError(
                "cannot tell which overrides the retrain was started with, so its child "
                "processes would not see the same paths, data and registry: compose with "
                "return_hydra_config=True, run it as a Hydra app, or pass overrides="
            )
        shared = shared_overrides(given, settings.children.shared_groups)
        children = ChildSettings(settings.children.shared_groups, shared)
        return replace(settings, children=children)


def launch_overrides(cfg: DictConfig) -> list[str] | None:
    """The command-line overrides this config was composed with (None when unknown)."""
    from hydra.core.hydra_config import HydraConfig

    node = OmegaConf.select(cfg, "hydra.overrides.task", default=None)
    if node is not None:
        return [str(item) for item in node]
    if HydraConfig.initialized():
        return [str(item) for item in HydraConfig.get().overrides.task]
    return None


def shared_overrides(overrides: list[str], groups: list[str]) -> list[str]:
    """The overrides that set a key of (or choose an option for) one of ``groups``."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    kept = []
    for override in parsed:
        top = override.key_or_group.split(".", 1)[0].split("/", 1)[0]
        if top in groups:
            kept.append(override.input_line or "")
    return kept
