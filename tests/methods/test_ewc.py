"""EWC: the Fisher against a naive per-sample computation; the penalty and its gradient against
hand sums over the stages."""

from __future__ import annotations

import pytest
import torch

from lifelong.data.tokens import sample_rows
from lifelong.methods.ewc import EWC, EWCConfig, empirical_fisher
from tests.methods.conftest import blocks, context, tiny_model


def naive_fisher(model, rows):
    params = [p for p in model.parameters() if p.requires_grad]
    total = [torch.zeros_like(p) for p in params]
    for row in rows:
        loss = model(input_ids=row[None], labels=row[None]).loss
        for acc, grad in zip(total, torch.autograd.grad(loss, params), strict=True):
            acc += grad**2
    return [t / len(rows) for t in total]


def test_fisher_penalty_and_online_decay(tokenizer, tmp_path):
    model = tiny_model(tokenizer).eval()
    data = [blocks(len(tokenizer), 6, seed=0)]
    ewc = EWC(EWCConfig(ewc_lambda=7.0, fisher_samples=4))
    ewc.after_stage(context(0, data, model, tmp_path))
    fisher, anchor = ewc.fisher, ewc.anchor
    for ours, naive in zip(fisher.values(), naive_fisher(model, data[0][sample_rows(6, 4, seed=0)]), strict=True):
        assert torch.allclose(ours, naive, rtol=1e-4, atol=1e-12)

    assert ewc.penalty().item() == 0.0  # at the anchor
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    expected = 0.0
    for (name, p), f in zip(model.named_parameters(), fisher.values(), strict=True):
        expected += (f.double() * (p.detach().double() - anchor[name].double()) ** 2).sum().item()
    assert ewc.penalty().item() == pytest.approx(7.0 / 2 * expected, rel=1e-4)

    # the gradient EWC adds at the step boundary is the penalty's: lambda F (theta - theta*), by hand
    named = dict(model.named_parameters())
    frozen = "transformer.wte.weight"
    for name, p in named.items():
        p.grad = None if name == frozen else torch.ones_like(p)
    ewc.transform_gradients(model)
    for name, p in named.items():
        if name == frozen:
            assert p.grad is None  # no gradient (frozen by TGL, say): left alone
            continue
        by_hand = 1 + 7.0 * fisher[name] * (p.detach() - anchor[name])
        assert torch.allclose(p.grad, by_hand, rtol=1e-5, atol=1e-7)


def test_online_keeps_one_decayed_fisher_and_the_latest_anchor(tokenizer, tmp_path):
    model = tiny_model(tokenizer).eval()
    data = [blocks(len(tokenizer), 4, seed=s) for s in range(2)]
    ewc = EWC(EWCConfig(online=True, gamma=0.5, fisher_samples=2))
    ewc.after_stage(context(0, data[:1], model, tmp_path))
    first = {k: v.clone() for k, v in ewc.fisher.items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    ewc.after_stage(context(1, data, model, tmp_path))
    fresh = EWC(EWCConfig(fisher_samples=2))
    fresh.after_stage(context(1, data, model, tmp_path))
    for name, value in ewc.fisher.items():
        assert torch.allclose(value, 0.5 * first[name] + fresh.fisher[name])
    for name, p in model.named_parameters():
        assert torch.equal(ewc.anchor[name], p.detach())
    assert ewc.constant == 0.0


def test_plain_ewc_merges_its_stages_into_the_penalty_they_sum_to(tokenizer, tmp_path):
    """Three stages held as one Fisher and one anchor give the penalty and the gradient of three
    terms, each summed by hand; a parameter frozen in the first stage merges the stages it
    trained in. Position rows past the blocks' length have no Fisher in any stage."""
    model = tiny_model(tokenizer).eval()
    data = [blocks(len(tokenizer), 4, seed=s) for s in range(3)]
    named = dict(model.named_parameters())
    late = "transformer.h.0.attn.c_attn.weight"
    ewc = EWC(EWCConfig(ewc_lambda=7.0, fisher_samples=2))
    stage_terms = []
    for index in range(3):
        named[late].requires_grad_(index > 0)
        fisher = empirical_fisher(model, data[index], 2, torch.device("cpu"), seed=index)  # as EWC draws
        stage_terms.append({name: (f.double(), named[name].detach().double().clone()) for name, f in fisher.items()})
        ewc.after_stage(context(index, data, model, tmp_path))
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * torch.randn_like(p))
    assert late not in stage_terms[0] and late in ewc.fisher
    assert set(ewc.fisher) == set(ewc.anchor) == set(named)

    by_hand = sum(((f * (named[name].detach().double() - a) ** 2).sum() for term in stage_terms
                   for name, (f, a) in term.items()), torch.zeros((), dtype=torch.float64))
    assert ewc.penalty().item() == pytest.approx(7.0 / 2 * by_hand.item(), rel=1e-5)

    for p in model.parameters():
        p.grad = torch.ones_like(p)
    ewc.transform_gradients(model)
    for name, p in named.items():
        expected = 1 + 7.0 * sum(term[name][0] * (p.detach().double() - term[name][1])
                                 for term in stage_terms if name in term)
        assert torch.allclose(p.grad.double(), expected, rtol=1e-5, atol=1e-6), name


def test_resumed_terms_move_to_their_parameters_device(tokenizer, tmp_path):
    """A checkpoint loads onto the CPU; on a GPU the terms must follow the parameters (the meta
    device stands in for CUDA here: a term left behind would raise in transform_gradients)."""
    model = tiny_model(tokenizer).eval()
    data = [blocks(len(tokenizer), 4, seed=0)]
    saved = EWC(EWCConfig(fisher_samples=2))
    saved.after_stage(context(0, data, model, tmp_path))
    resumed = EWC(EWCConfig(fisher_samples=2))
    resumed.load_state_dict(saved.state_dict())
    resumed.before_stage(context(1, data, model.to("meta"), tmp_path))
    fisher, anchor = resumed.fisher, resumed.anchor
    assert {t.device.type for t in [*fisher.values(), *anchor.values()]} == {"meta"}


def test_a_checkpoint_with_a_term_per_stage_loads_merged(tokenizer, tmp_path):
    """Checkpoints written before the merge hold {"terms": [(fisher, anchor), ...]}, one per stage."""
    model = tiny_model(tokenizer).eval()
    data = [blocks(len(tokenizer), 4, seed=s) for s in range(2)]
    ran = EWC(EWCConfig(fisher_samples=2))
    terms = []
    for index in range(2):
        ran.after_stage(context(index, data, model, tmp_path))
        fisher = empirical_fisher(model, data[index], 2, torch.device("cpu"), seed=index)  # as EWC draws
        terms.append((fisher, {name: p.detach().clone() for name, p in model.named_parameters()}))
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * torch.randn_like(p))
    loaded = EWC(EWCConfig(fisher_samples=2))
    loaded.load_state_dict({"terms": terms})
    assert loaded.constant == pytest.approx(ran.constant) and ran.constant > 0
    for name in ran.fisher:
        assert torch.equal(loaded.fisher[name], ran.fisher[name]) and torch.equal(loaded.anchor[name], ran.anchor[name])
