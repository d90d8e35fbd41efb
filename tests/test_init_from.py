"""``--init_from`` (custom/init_from.py): load a bundle's or checkpoint's network weights before training."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from custom.errors import OptionError, describe
from custom.init_from import (
    checked_checkpoint,
    init_network,
    load_network_state,
    load_weights,
    resolve_init_path,
    weights_file_problem,
)
from custom.io import DataError


def _tiny(width: int = 4) -> nn.Module:
    # (B, 1, H, W, D) -> (B, 2, H, W, D); a BatchNorm buffer is part of the state_dict too
    return nn.Sequential(nn.Conv3d(1, width, 3, padding=1), nn.BatchNorm3d(width), nn.Conv3d(width, 2, 1))


def _trained(seed: int = 1, width: int = 4) -> nn.Module:
    torch.manual_seed(seed)
    net = _tiny(width)
    with torch.no_grad():
        net[1].running_mean.uniform_()
    return net


def _assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_none_or_empty_leaves_the_network_untouched():
    net = _trained()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert init_network(net, None) is net
    assert init_network(net, "") is net
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_bundle_folder_loads_models_model_pt(tmp_path):
    source = _trained()
    (tmp_path / "models").mkdir()
    torch.save(source.state_dict(), tmp_path / "models" / "model.pt")
    torch.manual_seed(7)
    target = _tiny()
    assert not torch.equal(target[0].weight, source[0].weight)
    assert init_network(target, str(tmp_path)) is target
    _assert_same_weights(target, source)


def test_checkpoint_dict_with_network_entry_and_random_states(tmp_path):
    import numpy as np

    source = _trained(seed=3)
    # like checkpoints/checkpoint_final.pt: other entries, NumPy random state (not loadable with weights_only)
    path = tmp_path / "checkpoint_final.pt"
    torch.save(
        {"network": source.state_dict(), "trainer": {"epoch": 2}, "random_state": np.random.RandomState(0).get_state()},
        path,
    )
    target = _tiny()
    init_network(target, path)
    _assert_same_weights(target, source)


def test_ddp_prefix_is_stripped(tmp_path):
    source = _trained()
    path = tmp_path / "ddp.pt"
    torch.save({f"module.{k}": v for k, v in source.state_dict().items()}, path)
    assert set(load_network_state(path)) == set(source.state_dict())


def test_shape_mismatch_is_one_line_naming_the_file(tmp_path):
    path = tmp_path / "wide.pt"
    torch.save(_trained(width=8).state_dict(), path)
    with pytest.raises(OptionError) as info:
        init_network(_tiny(width=4), path)
    message = describe(info.value)
    assert "\n" not in message
    assert message.startswith("--init_from: ") and str(path) in message
    assert "shape mismatch" in message and "0.weight (8, 1, 3, 3, 3) vs (4, 1, 3, 3, 3)" in message


def test_missing_and_unexpected_keys_are_named(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"encoder.weight": torch.zeros(1), **_trained().state_dict()}, path)
    smaller = {k: v for k, v in _trained().state_dict().items() if not k.startswith("2.")}
    torch.save(smaller, tmp_path / "smaller.pt")
    with pytest.raises(OptionError, match=r"unexpected keys encoder\.weight"):
        init_network(_tiny(), path)
    with pytest.raises(OptionError, match=r"missing keys 2\.weight, 2\.bias"):
        init_network(_tiny(), tmp_path / "smaller.pt")


def test_bad_paths_and_contents(tmp_path):
    with pytest.raises(OptionError, match="no such file or bundle folder"):
        resolve_init_path(tmp_path / "nothing.pt")
    with pytest.raises(OptionError, match="not a trained bundle"):
        resolve_init_path(tmp_path)
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(OptionError, match="not a readable PyTorch file"):
        load_network_state(tmp_path / "junk.pt")
    torch.save({"optimizer": {"lr": 0.1}}, tmp_path / "no_net.pt")
    with pytest.raises(OptionError, match="neither a network state_dict"):
        load_network_state(tmp_path / "no_net.pt")


def test_method_config_network_uses_init_from(tmp_path, monkeypatch):
    from pathlib import Path

    from monai.bundle import ConfigParser

    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "supervised_la.json"))
    assert parser["init_from"] is None
    kwargs = dict(spatial_dims=3, in_channels=1, out_channels=2, base_filters=4, dropout=0.0, normalization="batch")
    parser["network_kwargs"] = kwargs  # no dataset needed
    parser["device"] = "cpu"
    import custom.networks

    torch.manual_seed(5)
    source = custom.networks.PaperVNet(**kwargs)
    parser["network_class"] = "PaperVNet"
    torch.save(source.state_dict(), tmp_path / "weights.pt")
    parser["init_from"] = str(tmp_path / "weights.pt")
    network = parser.get_parsed_content("network", instantiate=True, lazy=False)
    _assert_same_weights(network, source)


# ------------------------------------------------------------------------------------------- weights files


def test_non_finite_weights_are_refused(tmp_path):
    state = _trained().state_dict()
    state["0.weight"] = state["0.weight"] * float("nan")
    torch.save(state, tmp_path / "nan.pt")
    with pytest.raises(OptionError) as info:
        init_network(_tiny(), tmp_path / "nan.pt")
    assert str(info.value) == (
        f"--init_from: {tmp_path / 'nan.pt'}: 1 of {len(state)} tensors hold NaN or Inf values (0.weight): the "
        "weights of a run that diverged; a network started from them learns nothing"
    )


def test_weights_file_problem_says_what_the_file_holds(tmp_path):
    text, empty, cut, good = (tmp_path / n for n in ("text.pt", "empty.pt", "cut.pt", "good.pt"))
    text.write_text("hello")
    empty.write_bytes(b"")
    torch.save(_trained().state_dict(), good)
    cut.write_bytes(good.read_bytes()[:200])
    assert weights_file_problem(text) == ("not a readable PyTorch file: it holds text starting b'hello' (5 bytes), "
                                          "not the zip archive torch.save writes")
    assert weights_file_problem(empty) == "an empty file (0 bytes)"
    assert "not a readable PyTorch file: it holds binary data" in weights_file_problem(cut)
    assert weights_file_problem(good) is None
    assert weights_file_problem(tmp_path / "none.pt") == "no such file"


def test_bundle_weights_are_checked_before_loading(tmp_path):
    path = tmp_path / "model.pt"
    with pytest.raises(FileNotFoundError, match="no such weights file"):
        load_weights(_tiny(), path)
    path.write_text("not weights")
    with pytest.raises(DataError) as info:
        load_weights(_tiny(), path)
    assert str(info.value).startswith(f"{path}: not a readable PyTorch file: it holds text")
    torch.save(_trained(width=8).state_dict(), path)
    with pytest.raises(DataError) as info:
        load_weights(_tiny(4), path)
    assert str(info.value).startswith(f"{path}: does not match the network Sequential: shape mismatch (file vs "
                                      "network) 0.weight (8, 1, 3, 3, 3) vs (4, 1, 3, 3, 3)")
    torch.save(_trained(), path)  # a pickled network, not a state_dict
    with pytest.raises(DataError) as info:
        load_weights(_tiny(), path)
    assert "holds Python objects besides tensors" in str(info.value)
    assert "weights_only" not in str(info.value)  # never advise loading untrusted pickles
    torch.save(_trained().state_dict(), path)
    _assert_same_weights(load_weights(_tiny(), path), _trained())


def test_resume_checkpoint_is_checked(tmp_path):
    path = tmp_path / "checkpoint_epoch=1.pt"
    assert checked_checkpoint(None, _tiny()) is None
    torch.save({"network": _trained().state_dict(), "optimizer": {}}, path)
    assert checked_checkpoint(path, _tiny(), ["network", "optimizer"]) == str(path)
    with pytest.raises(DataError, match="lacks the checkpoint entries random_state"):
        checked_checkpoint(path, _tiny(), ["network", "optimizer", "random_state"])
    with pytest.raises(DataError, match="does not match the network Sequential"):
        checked_checkpoint(path, _tiny(8), ["network"])
    torch.save(_trained().state_dict(), path)
    with pytest.raises(DataError, match="is no training checkpoint"):
        checked_checkpoint(path, _tiny(), ["network"])
