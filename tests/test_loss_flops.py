"""Equal cost counts the losses' work (nst.loss.evaluation_flops, nst.estimate.work_flops): the count
held to torch's own FLOP counter on the real style terms, forward and backward."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from nst import compose, loss
from nst.estimate import trial_flops, work_flops


@pytest.mark.parametrize("form", ["mse", "paper", "w2"])
@pytest.mark.parametrize("layer, size", [("relu1_1", (20, 14)), ("relu3_1", (48, 40))])
def test_the_style_terms_count_is_what_torch_counts(form, layer, size):
    spec = loss.LossSpec(content_layers=(), style_layers=(layer,), style_layer_weights=(1.0,), content_form="mse",
                         style_form=form)
    ((n, c),) = loss.layer_shapes("vgg19", spec.style_layers, *size).values()
    f = torch.rand(1, c, n, 1, requires_grad=True)  # the layer's map: n positions (its shape does not matter)
    reference = torch.rand(1, c, n, 1)
    if form == "w2":
        target = loss.W2Target.of(*loss.moments(reference))
    else:
        target = loss.gram(reference, normalise=form != "paper")
    with FlopCounterMode(display=False) as counter:
        loss.style_term(f, target, form).sum().backward()
    assert counter.get_total_flops() == loss.evaluation_flops(spec, "vgg19", *size) > 0


def test_a_w2_recipe_does_more_work_per_evaluation_than_a_gram_one_and_strotss_more_than_its_network():
    def settings(recipe):
        return compose.settings_for([f"recipe={recipe}", "size=128", "content=tubingen", "style=starry_night"])

    gram, w2, strotss = settings("pastiche"), settings("crowsonkb"), settings("strotss")
    # a Gram recipe: the network's work and a few per cent more
    assert 1 < work_flops(gram) / trial_flops(gram) < 1.2
    # crowsonkb's matrix square roots (512 x 512 at relu4_1 and relu5_1) cost several networks at 128 px
    assert work_flops(w2) / trial_flops(w2) > 3
    # STROTSS: the transport costs on 1024 sampled hypercolumns of ~1700 channels
    assert work_flops(strotss) / trial_flops(strotss) > 2


def test_the_time_estimate_counts_losses_heavier_than_gram_matrices():
    from nst import estimate

    def settings(recipe):
        return compose.settings_for([f"recipe={recipe}", "size=128", "steps=100", "content=tubingen",
                                     "style=starry_night", "pyramid.levels=1", "pyramid.steps=null"])

    gram, w2 = settings("pastiche"), settings("crowsonkb")
    assert trial_flops(w2) == trial_flops(gram)  # the same network evaluations...
    rate = 2e10
    extra = estimate.seconds([w2], rate) - estimate.seconds([gram], rate)
    # ...but the estimate adds the square roots' work, at the network's rate (Gram matrices are in OVERHEAD)
    assert extra == pytest.approx((work_flops(w2) - trial_flops(w2)) / rate, rel=1e-6)
