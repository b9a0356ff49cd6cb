"""Every config and sweep file composes, and resolves to valid settings."""

import pytest
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from nst import compose
from nst.settings import settings_from_dict

CONF = compose.CONF_DIR
GROUPS = {g: sorted(p.stem for p in (CONF / g).glob("*.yaml")) for g in ("model", "optimizer", "init", "layers", "logger")}
SWEEPS = sorted(p.stem for p in (CONF / "sweep").glob("*.yaml"))


def _compose(overrides, hydra_config=False):
    compose.register_resolvers()
    with initialize_config_dir(config_dir=str(CONF), version_base=compose.VERSION_BASE, job_name="nst"):
        return hydra_compose(config_name="config", overrides=overrides, return_hydra_config=hydra_config)


def test_default_config_is_the_paper_setup():
    cfg = OmegaConf.to_container(_compose([]), resolve=True)
    s = settings_from_dict(cfg)
    assert s.objective.content_layers == ("conv4_2",)
    assert s.objective.style_layers == ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1")
    assert s.objective.style_layer_weights == pytest.approx((0.2,) * 5)
    assert (s.arch, s.weights, s.optimizer.name, s.init) == ("vgg19", "caffe", "lbfgs", "content")
    # null loss weights take the weights spec's own defaults
    assert (s.content_weight, s.style_weight) == (1e4, 1e5)


@pytest.mark.parametrize("group,option", [(g, o) for g, opts in GROUPS.items() for o in opts])
def test_every_group_option_composes(group, option):
    extra = ["init.path=tubingen"] if (group, option) == ("init", "image") else []
    cfg = OmegaConf.to_container(_compose([f"{group}={option}", *extra]), resolve=True)
    s = settings_from_dict(cfg)
    assert s is not None


@pytest.mark.parametrize("sweep", SWEEPS)
def test_every_sweep_file_composes_and_expands(sweep):
    cfg = _compose([f"+sweep={sweep}"], hydra_config=True)
    params = cfg.hydra.sweeper.params
    assert params, f"sweeps/{sweep}.yaml defines no hydra.sweeper.params"
    assert cfg.sweep_name == sweep
    trials = compose.expand_trials([f"+sweep={sweep}", "size=32"], multirun=True)
    assert len(trials) >= 2
    for trial in trials:
        GlobalHydra.instance().clear()
        s = settings_from_dict(OmegaConf.to_container(_compose(trial), resolve=True))
        assert s.size == 32


def test_layer_lists_are_overridable_as_lists():
    cfg = OmegaConf.to_container(_compose(["style_layers=[conv1_1,relu2_1]", "content_layers=[]"]), resolve=True)
    s = settings_from_dict(cfg)
    assert s.objective.style_layers == ("conv1_1", "relu2_1") and s.objective.content_layers == ()


def test_command_line_sweep_expands_like_hydra():
    trials = compose.expand_trials(["style_weight=1,2", "optimizer=lbfgs,adam", "size=32"], multirun=True)
    assert len(trials) == 4
    assert all("size=32" in t for t in trials)
