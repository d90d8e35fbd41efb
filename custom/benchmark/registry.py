"""The benchmark's protocol: the methods a user can run today, the noise settings, the seeds and the case lists.

A method is one :class:`MethodSpec`: its key (the run folders' name, ``<setting>/<key>_s<seed>/``), the label the
report prints, its family (the report's grouping and the learning-curve panels), the config files and overrides it
runs with, the baselines it is paired against beyond HL-Sup (``diff_to``), the source of its label audit and the noise
families it runs under. Every run writes its spec into its folder (``run_record.json``,
:mod:`custom.benchmark.run_record`), and the report reads the specs from there: a variant that is no longer run (an
earlier default, a validation alternative) is reported from its archived record and needs no entry here.

A changed default therefore gets new runs under the method's key in a new archive, never a rename of archived runs:
the archived ones keep the record of what they ran with.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "FAMILIES",
    "BASELINES",
    "IGNORING_BASELINES",
    "MethodSpec",
    "METHODS",
    "Setting",
    "SETTINGS",
    "PRIMARY_SETTINGS",
    "PROTOCOL_PREPARE_ARGS",
    "PROTOCOL_SEEDS",
    "PROTOCOL_RUNS",
    "PROTOCOL_V2_PREPARE_ARGS",
    "Protocol",
    "PROTOCOLS",
    "SETTING_INDEPENDENT_METHODS",
    "AUDIT_SOURCES",
]

#: method families in report order: the supervised baselines, then one family per line of work
FAMILIES: dict[str, str] = {
    "baseline": "Supervised baselines",
    "mean_teacher": "Mean-teacher family (ALC, MTCL)",
    "coteaching": "Co-teaching family (Co-teaching, JoCoR, Tri-network, SP-guided)",
    "jcas": "JCAS",
}
#: the baselines every family is compared with (drawn in every learning-curve panel)
BASELINES = ("h_sup", "ssl_mt", "hl_sup", "clean")
#: the methods that ignore the noisy labels (H-Sup: the HQ cases alone; ssl_mt: the HQ cases and the LQ images): every
#: method is paired with each, and the better of them by mean Dice is the bar of a setting (docs/protocol.md)
IGNORING_BASELINES = ("h_sup", "ssl_mt")


@dataclass(frozen=True)
class MethodSpec:
    """One benchmark method: how it runs and how the report shows it.

    Attributes:
        key: the run folders' name (``<key>_s<seed>``) and the results document's key.
        label: the report's name for it.
        family: a key of :data:`FAMILIES` (another string groups the method after them).
        configs: config files, in order, before the profile's overlays.
        overrides: config overrides on the command line.
        diff_to: the methods it is paired against beyond HL-Sup.
        audit_source: ``scripts/audit_labels.py --source`` for its label audit (None: no audit).
        noise_families: the setting families (:attr:`Setting.family`) it runs under.
    """

    key: str
    label: str
    family: str
    configs: tuple[str, ...]
    overrides: Mapping[str, Any] = field(default_factory=dict)
    diff_to: tuple[str, ...] = ()
    audit_source: str | None = None
    noise_families: tuple[str, ...] = ("mtcl", "sp")

    def __post_init__(self) -> None:
        if not self.key or "/" in self.key or not self.label:
            raise ValueError(f"a method needs a key without '/' and a label: key {self.key!r}, label {self.label!r}")
        if not self.configs:
            raise ValueError(f"method {self.key!r}: no config files")
        for name in ("configs", "diff_to", "noise_families"):  # lists from a JSON record become tuples
            object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(self, "overrides", dict(self.overrides))

    def to_dict(self) -> dict[str, Any]:
        """The spec as JSON-ready data (the ``"method"`` entry of a run record)."""
        out = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MethodSpec:
        """The spec of :meth:`to_dict`'s data.

        Raises:
            ValueError: for a missing or unknown field, or a value :meth:`__post_init__` refuses.
        """
        names = set(cls.__dataclass_fields__)
        unknown, missing = set(data) - names, {"key", "label", "family", "configs"} - set(data)
        if unknown or missing:
            raise ValueError(f"method record: unknown fields {sorted(unknown)}, missing fields {sorted(missing)}")
        return cls(**dict(data))


_SUPERVISED = ("configs/supervised_la.json",)
_JCAS_WARMUP = ("configs/jcas_la.json", "configs/ablations/jcas_warmup_only.json")
_MTCL_ONLY = ("mtcl",)


def _spec(key: str, label: str, family: str, configs: Sequence[str], **kwargs: Any) -> tuple[str, MethodSpec]:
    return key, MethodSpec(key, label, family, tuple(configs), **kwargs)


# The protocol's methods, in report order. The teacher's uncertainty audits ALC and MTCL, the refinement's changed
# fraction SP-guided, a plain network's prediction disagreement HL-Sup.
METHODS: dict[str, MethodSpec] = dict(
    [
        _spec("h_sup", "H-Sup", "baseline", _SUPERVISED, overrides={"label_mode": "hq"}),
        # HQ exposure (cpu_la.json, 1400 iterations): H-Sup draws about 4200 HQ patches (batch 4 of HQ only), the
        # two-stream methods, ssl_mt among them, 2800 (batch_hq 2) beside 2800 LQ patches (docs/protocol.md)
        _spec("ssl_mt", "SSL mean teacher (LQ labels unused)", "baseline",
              ["configs/alc_la.json", "configs/ablations/ssl_mt.json"]),
        _spec("hl_sup", "HL-Sup", "baseline", _SUPERVISED, overrides={"label_mode": "hq+lq"},
              audit_source="disagreement"),
        _spec("clean", "Clean (upper bound)", "baseline", _SUPERVISED, overrides={"label_mode": "clean"}),
        _spec("mean_teacher", "Mean Teacher", "mean_teacher",
              ["configs/alc_la.json", "configs/ablations/mean_teacher.json"]),
        _spec("alc_no_ls", "ALC w/o LS", "mean_teacher",
              ["configs/alc_la.json", "configs/ablations/alc_no_selection.json"], diff_to=("mean_teacher",),
              noise_families=_MTCL_ONLY),
        _spec("alc_no_lr", "ALC w/o LR", "mean_teacher",
              ["configs/alc_la.json", "configs/ablations/alc_no_refinement.json"], diff_to=("mean_teacher",),
              noise_families=_MTCL_ONLY),
        _spec("alc", "ALC", "mean_teacher", ["configs/alc_la.json"],
              diff_to=("mean_teacher", "alc_no_lr", "alc_no_ls"), audit_source="alc"),
        _spec("mtcl", "MTCL", "mean_teacher", ["configs/mtcl_la.json"], diff_to=("mean_teacher",), audit_source="alc",
              noise_families=_MTCL_ONLY),
        _spec("coteaching", "Co-teaching", "coteaching", ["configs/coteaching_la.json"]),
        _spec("jocor", "JoCoR", "coteaching", ["configs/jocor_la.json"], diff_to=("coteaching",)),
        _spec("trinet", "Tri-network", "coteaching", ["configs/trinet_la.json"]),
        _spec("spguided_voxel", "SP-guided (voxel pieces)", "coteaching", ["configs/spguided_voxel_la.json"],
              diff_to=("coteaching",)),
        _spec("spguided", "SP-guided", "coteaching", ["configs/spguided_la.json"], diff_to=("coteaching",),
              audit_source="spguided"),
        _spec("jcas_warmup_only", "JCAS warm-up only (deep-supervised network)", "jcas", _JCAS_WARMUP),
        _spec("jcas_no_dar", "JCAS w/o DAR", "jcas", ["configs/jcas_la.json", "configs/ablations/jcas_no_dar.json"],
              diff_to=("jcas_warmup_only",), noise_families=_MTCL_ONLY),
        _spec("jcas", "JCAS", "jcas", ["configs/jcas_la.json"], diff_to=("jcas_warmup_only", "jcas_no_dar")),
    ]
)
#: methods with a label audit, and its source (``scripts/audit_labels.py --source``)
AUDIT_SOURCES: dict[str, str] = {k: s.audit_source for k, s in METHODS.items() if s.audit_source is not None}
# methods whose training data do not depend on the noise: H-Sup trains on the HQ cases only, the clean upper bound on
# every case's clean label, ssl_mt on the HQ cases and the LQ images (tests/benchmark/test_ssl_mt.py: its step does
# not change with the LQ labels), and which cases are HQ / validation follows the seed and the HQ fraction, not the
# simulator
SETTING_INDEPENDENT_METHODS = ("h_sup", "ssl_mt", "clean")


# The protocol's case lists (scripts/prepare_la.py --train-list / --test-list / --val-count): 20 test cases (the 6 of
# test.list and the first 14 of extra.list), the same for every run; the training pool is train.list plus 2 cases of
# extra.list so that 4 validation cases (model selection, the plateau check) leave 22 training cases (6 HQ, 16 LQ).
PROTOCOL_PREPARE_ARGS: list[str] = [
    "--train-list",
    "train.list",
    "extra.list:14:16",
    "--test-list",
    "test.list",
    "extra.list::14",
    "--val-count",
    "4",
]


@dataclass
class Setting:
    """A noise setting: how ``scripts/prepare_la.py`` builds its dataset, and a level for plots."""

    name: str
    prepare_args: list[str]
    noise_level: float
    family: str
    methods: list[str] = field(default_factory=list)


def _methods_of(noise_family: str) -> list[str]:
    return [k for k, spec in METHODS.items() if noise_family in spec.noise_families]


SETTINGS: dict[str, Setting] = {
    "mtcl_hq25": Setting("mtcl_hq25", ["--noise", "mtcl", "--hq-fraction", "0.25"], 0.75, "mtcl", _methods_of("mtcl")),
    "mtcl_hq10": Setting("mtcl_hq10", ["--noise", "mtcl", "--hq-fraction", "0.10"], 0.90, "mtcl", _methods_of("mtcl")),
    **{
        f"sp_a{a}_b{b}": Setting(
            f"sp_a{a}_b{b}",
            ["--noise", "sp", "--alpha", str(a), "--param", f"beta={b}", "--hq-fraction", "0.25"],
            a * b,
            "sp",
            _methods_of("sp"),
        )
        for a, b in [(0.3, 0.5), (0.5, 0.5), (0.7, 0.7)]
    },
}
#: the setting of each noise family on which the methods are judged
PRIMARY_SETTINGS = {"mtcl": "mtcl_hq25", "sp": "sp_a0.7_b0.7"}
#: the protocol's seeds: every (setting, method) runs with each (docs/benchmarks.md)
PROTOCOL_SEEDS: list[int] = [0, 1, 2]
# The protocol's runs (``scripts/benchmark.py --protocol-runs``; the baselines' runs are budgeted separately): each
# family's methods on the primary settings where they are judged, 3 seeds. The SP setting first; within a setting
# longest first, so that two jobs end on short runs.
PROTOCOL_RUNS: dict[str, list[str]] = {
    "sp_a0.7_b0.7": ["alc", "spguided", "coteaching", "jcas", "jcas_warmup_only"],
    "mtcl_hq25": ["alc", "alc_no_lr", "alc_no_ls", "spguided", "coteaching", "mtcl", "jcas", "mean_teacher",
                  "jcas_warmup_only", "spguided_voxel", "jocor", "trinet"],
}


@dataclass(frozen=True)
class Protocol:
    """A benchmark protocol: case lists, seeds, runs and the paired interval its report uses.

    Runs of two protocols are never paired with each other: each has its own work folder and archive
    (``scripts/benchmark.py --protocol``, docs/protocol.md).

    Attributes:
        name: ``scripts/benchmark.py --protocol`` value.
        description: one line for the results document.
        prepare_args: ``scripts/prepare_la.py`` case-list arguments of every dataset.
        seeds: the seeds every (setting, method) of ``runs`` runs with.
        runs: ``{setting: [method, ...]}`` of ``--protocol-runs`` (longest first within a setting).
        interval: :data:`custom.benchmark.paired.INTERVALS` entry of the report's paired intervals.
        n_test_cases / n_validation_cases: the sizes the lists give.
        archive: the run archive of its runs (``--archive-dir``).
    """

    name: str
    description: str
    prepare_args: tuple[str, ...]
    seeds: tuple[int, ...]
    runs: Mapping[str, Sequence[str]]
    interval: str
    n_test_cases: int
    n_validation_cases: int
    archive: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data (the results document's ``"protocol"`` entry)."""
        return {
            "name": self.name, "description": self.description, "prepare_args": list(self.prepare_args),
            "seeds": list(self.seeds), "runs": {k: list(v) for k, v in self.runs.items()}, "interval": self.interval,
            "n_test_cases": self.n_test_cases, "n_validation_cases": self.n_validation_cases, "archive": self.archive,
        }


# The second protocol (docs/protocol.md): the training pool of the first (train.list + extra.list:14:16, 26 cases, 4 of
# them validation), 8 more validation cases from the unused extra.list[16:24] (12 in all; they leave the pool's split
# as it is), and 46 test cases: test.list (6) + extra.list::14 (14) + extra.list:24:50 (26). 8 seeds: the expected
# 95% half-width of a paired difference over seeds and cases is about 0.016-0.021 Dice with 46 cases
# (scripts/protocol_power.py on the first protocol's archive); 3 seeds would give 0.023-0.028.
PROTOCOL_V2_PREPARE_ARGS: list[str] = [
    "--train-list", "train.list", "extra.list:14:16",
    "--test-list", "test.list", "extra.list::14", "extra.list:24:50",
    "--val-count", "4",
    "--val-list", "extra.list:16:24",
]
_V2_MTCL = ["alc", "alc_no_ls", "spguided", "hl_sup", "mtcl", "ssl_mt", "h_sup", "clean", "mean_teacher"]
PROTOCOLS: dict[str, Protocol] = {
    "v1": Protocol(
        "v1", "20 test cases, 4 validation cases, 3 seeds; paired intervals over cases (the seeds fixed)",
        tuple(PROTOCOL_PREPARE_ARGS), tuple(PROTOCOL_SEEDS), PROTOCOL_RUNS, "cases", 20, 4,
        "docs/benchmark_runs_converged",
    ),
    "v2": Protocol(
        "v2", "46 test cases, 12 validation cases, 8 seeds; paired intervals over seeds, then cases",
        tuple(PROTOCOL_V2_PREPARE_ARGS), tuple(range(8)),
        {
            "sp_a0.7_b0.7": ["alc", "spguided", "coteaching", "hl_sup", "ssl_mt", "h_sup", "clean"],
            "mtcl_hq25": list(_V2_MTCL),
            "mtcl_hq10": list(_V2_MTCL),
        },
        "seeds_and_cases", 46, 12, "docs/benchmark_runs_v2",
    ),
}
