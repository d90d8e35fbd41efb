"""One source of defaults: a trainer built in Python without an option behaves as the method's config does.

For every method config, each trainer argument that the config sets from a literal top-level id (``"@lambda_noisy"``
-> ``5.0``) must equal that argument's default in the trainer's constructor, except the few listed below with the
reason they differ on purpose.
"""

from __future__ import annotations

import inspect

import pytest
from monai.bundle import ConfigParser

import custom.engines as engines

METHOD_CONFIGS = {
    "configs/alc_la.json": engines.MeanTeacherTrainer,
    "configs/mtcl_la.json": engines.MTCLTrainer,
    "configs/coteaching_la.json": engines.CoTeachingTrainer,
    "configs/jocor_la.json": engines.JoCoRTrainer,
    "configs/trinet_la.json": engines.TriNetworkTrainer,
    "configs/spguided_la.json": engines.SPGuidedTrainer,
    "configs/spguided_voxel_la.json": engines.SPGuidedVoxelTrainer,
    "configs/jcas_la.json": engines.JcasTrainer,
}

# deliberate differences, each with its reason
CONFIG_ONLY = {
    # the configs train with an HQ set and the validation split preferred trusting it; a trainer built in Python may
    # have no HQ set (the papers' setting), so the constructor keeps the papers' selection
    "trust_hq",
    # MONAI SupervisedTrainer options whose defaults are MONAI's, not the method's
    "decollate", "epoch_length",
}


def constructor_defaults(cls) -> dict:
    defaults = {}
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        for name, parameter in inspect.signature(klass.__init__).parameters.items():
            if parameter.default is not inspect.Parameter.empty:
                defaults.setdefault(name, parameter.default)
    return defaults


def literal(parser: ConfigParser, value):
    """The literal a trainer argument resolves to, or None when it is an expression or a component."""
    while isinstance(value, str) and value.startswith("@") and "::" not in value:
        value = parser[value[1:]]
    while isinstance(value, str) and value.startswith("%"):
        file, _, key = value[1:].partition("#")
        other = ConfigParser()
        other.read_config(file)
        value = other[key]
    if isinstance(value, (dict, list)) or (isinstance(value, str) and value[:1] in "$@%"):
        return None
    return value


@pytest.mark.parametrize("config, trainer_class", sorted(METHOD_CONFIGS.items(), key=lambda kv: kv[0]))
def test_trainer_defaults_match_the_method_config(config, trainer_class):
    parser = ConfigParser()
    parser.read_config(config)
    defaults = constructor_defaults(trainer_class)
    checked, mismatches = 0, []
    for name, value in parser["train"]["trainer"].items():
        if name in CONFIG_ONLY or name not in defaults:
            continue
        resolved = literal(parser, value)
        if resolved is None:
            continue
        checked += 1
        if resolved != defaults[name]:
            mismatches.append(f"{name}: config {resolved!r}, constructor {defaults[name]!r}")
    assert checked > 0
    assert not mismatches, f"{config}: " + "; ".join(mismatches)
