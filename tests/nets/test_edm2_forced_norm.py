"""EDM2's forced weight normalisation, moved from MPConv.forward to once per training phase: the same
weights, outputs and gradients as EDM2's in-forward update, and a network that may be called twice before
one backward (SiDA's fake score reads the generated and the real batch)."""

from __future__ import annotations

import copy

import pytest
import torch

from eldistill.nets.edm2 import defer_forced_normalization, force_normalize_


def test_deferred_normalisation_equals_edm2s_in_forward_update(latent):
    reference = latent.tiny_edm2(label_dim=0).train()  # seeded, output gain 1 (EDM2 starts it at 0)
    deferred = copy.deepcopy(reference)
    assert defer_forced_normalization(deferred)
    x, sigma = torch.randn(3, 4, 8, 8), torch.tensor([0.5, 1.0, 2.0])

    out_ref, logvar_ref = reference(x, sigma, return_logvar=True)  # EDM2 training reads every layer
    (out_ref.square().sum() + logvar_ref.sum()).backward()
    force_normalize_(deferred)
    out_def, logvar_def = deferred(x, sigma, return_logvar=True)
    (out_def.square().sum() + logvar_def.sum()).backward()
    torch.testing.assert_close(out_def, out_ref)
    for (name, a), b in zip(reference.named_parameters(), deferred.parameters()):
        torch.testing.assert_close(b, a, msg=name)
        if a.grad is not None:
            torch.testing.assert_close(b.grad, a.grad, msg=name)


def test_two_calls_before_backward(latent):
    net = latent.tiny_edm2(label_dim=0).train()
    x = torch.randn(2, 4, 8, 8)
    with pytest.raises(RuntimeError, match="inplace"):  # EDM2's in-forward update
        (net(x, torch.ones(2)) + net(x, 2 * torch.ones(2))).sum().backward()
    defer_forced_normalization(net)
    force_normalize_(net)
    (net(x, torch.ones(2)) + net(x, 2 * torch.ones(2))).sum().backward()
    assert all(p.grad is not None for p in net.unet.enc.parameters())
