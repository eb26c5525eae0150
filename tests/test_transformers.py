"""Transformers and Hugging Face models at every module entry point (issue 36 items 1 and 5): batches as
tensors, tuples and mappings (labels inside), outputs as ModelOutputs, loss_fn=None, token accuracy and the
counted-target weighting, tied weights and checkpoints.  Hugging Face models are built from configs (random
or locally trained weights, nothing downloaded)."""
from __future__ import annotations

import copy

import lscape
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lscape import checkpoints, probes
from lscape._flat import FlatLayout
from lscape._modelio import Objective, token_cross_entropy
from lscape.directions import pca_directions, random_directions
from lscape.models import nanogpt, vit
from torch import nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters

transformers = pytest.importorskip("transformers", reason="the test extra installs transformers")
transformers.logging.set_verbosity_error()

V = 37  # vocabulary of the small Hugging Face models


def _gpt2(attn: str = "sdpa", seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, n_positions=16, vocab_size=V, bos_token_id=0,
                                  eos_token_id=0, attn_implementation=attn)
    return transformers.GPT2LMHeadModel(cfg).eval()


def _bert(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                  vocab_size=V, max_position_embeddings=16)
    return transformers.BertForMaskedLM(cfg).eval()


def _hf_vit(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    cfg = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                 image_size=8, patch_size=4, num_channels=1, num_labels=5)
    return transformers.ViTForImageClassification(cfg).eval()


def _tokens(n: int = 6, t: int = 12, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (n, t), generator=torch.Generator().manual_seed(seed))


def _logits_ce(out, y):
    """A user's loss reading out.logits, shifted as a causal LM's (the issue's failing surface)."""
    return F.cross_entropy(out.logits[:, :-1].reshape(-1, V), y[:, 1:].reshape(-1))


def _plain_grid(model, loss, X, dirs, grid):
    """The surface by a plain loop: vector_to_parameters at each point, then the model."""
    m = copy.deepcopy(model)
    c = parameters_to_vector(m.parameters()).double()
    d = torch.as_tensor(dirs)
    out = np.zeros((len(grid), len(grid)))
    with torch.no_grad():
        for i, a in enumerate(grid):
            for j, b in enumerate(grid):
                vector_to_parameters((c + a * d[0] + b * d[1]).to(torch.float32), m.parameters())
                out[i, j] = float(loss(m, X))
    return out


# ---- the failures, reproduced first --------------------------------------------------------------
def test_hugging_face_surface_with_a_logits_loss_equals_a_plain_loop():
    """lscape.surface on a GPT2LMHeadModel with a loss_fn reading out.logits (was: AttributeError 'ndim')."""
    model, ids = _gpt2(), _tokens()
    s = lscape.surface(model, _logits_ce, (ids, ids), directions="filter", grid=3)
    want = _plain_grid(model, lambda m, x: _logits_ce(m(x), x), ids, s.directions, s.x)
    np.testing.assert_allclose(s["train_loss"], want, rtol=1e-5)
    assert np.all(s.done)


def test_model_own_loss_from_mapping_batches_weighted_by_counted_tokens():
    """loss_fn=None reads outputs.loss with the labels in the batch; two batches with different numbers of
    -100 labels stream to the loss over all tokens at once (the normalisation trap of transformers#34191),
    and a causal LM's shift is found."""
    model, ids = _gpt2(), _tokens(8)
    labels = ids.clone()
    labels[:3, 4:] = -100  # the first batch counts far fewer tokens
    batches = [{"input_ids": ids[:4], "labels": labels[:4]}, {"input_ids": ids[4:], "labels": labels[4:]}]
    L = lscape.Landscape.from_module(model, None, batches)
    theta = FlatLayout.of(model).flatten(model)
    with torch.no_grad():
        whole = model(input_ids=ids, labels=labels).loss
        per_batch_mean = (model(**batches[0]).loss + model(**batches[1]).loss) / 2
    assert L.objective.shift  # GPT-2's own loss shifts inside
    torch.testing.assert_close(L.loss(theta[None])[0], whole, rtol=1e-6, atol=0)
    assert abs(float(per_batch_mean - whole)) > 1e-3  # the trap this avoids is real here
    assert L.objective.count(next(iter(L.data))) == int((labels[:4, 1:] != -100).sum())


def test_token_accuracy_of_the_model_own_loss_skips_ignored_and_shifts():
    model, ids = _gpt2(), _tokens(4)
    labels = ids.clone()
    labels[:, ::3] = -100
    s = lscape.surface(model, None, {"input_ids": ids, "labels": labels}, directions="filter", grid=[0.0, 0.5])
    with torch.no_grad():
        z = model(input_ids=ids).logits[:, :-1]
    t = labels[:, 1:]
    mask = t != -100
    want = float(((z.argmax(-1) == t) & mask).sum() / mask.sum())
    assert s["train_acc"][0, 0] == pytest.approx(want, abs=1e-12)
    with torch.no_grad():
        assert s["train_loss"][0, 0] == pytest.approx(float(model(input_ids=ids, labels=labels).loss), rel=1e-6)


def test_intrinsic_dimension_accuracy_on_token_outputs():
    """intrinsic_dimension(..., metric="acc") on (batch, tokens, vocab) outputs (was a RuntimeError about
    tensor sizes): token accuracy of nanoGPT's shifted targets."""
    gen = torch.Generator().manual_seed(0)
    seq = torch.randint(0, 5, (32, 9), generator=gen)
    X, Y = seq[:, :-1], seq[:, 1:]

    def net():
        return nanogpt(vocab_size=5, context=8, d_model=16, n_layers=1, n_heads=2, seed=None)
    res = lscape.intrinsic_dimension(net, token_cross_entropy, (X, Y), dims=[20], epochs=1, batch_size=16, lr=1e-2,
                                     baseline=0.5)
    assert res.scores.shape == (1, 1) and 0.0 <= float(res.scores[0, 0]) <= 1.0
    model = net()
    with torch.no_grad():
        acc = Objective(token_cross_entropy).accuracy(model(X), Y)
    assert float(acc) == pytest.approx(float((model(X).argmax(-1) == Y).double().mean()))


# ---- every entry point with transformer batches -----------------------------------------------------------
@pytest.mark.parametrize("form", ["tensor", "tuple", "mapping", "mapping+labels"])
def test_batch_forms_give_the_same_loss(form):
    model, ids = _gpt2(), _tokens(5)
    mask = torch.ones_like(ids)
    loss = _logits_ce
    data = {"tensor": (ids, ids), "tuple": ((ids,), ids),
            "mapping": ({"input_ids": ids, "attention_mask": mask}, ids),
            "mapping+labels": {"input_ids": ids, "attention_mask": mask, "labels": ids}}[form]
    L = lscape.Landscape.from_module(model, loss, data)
    theta = FlatLayout.of(model).flatten(model)
    with torch.no_grad():
        want = _logits_ce(model(ids), ids)
    torch.testing.assert_close(L.loss(theta[None])[0], want, rtol=1e-6, atol=0)


def test_bert_masked_lm_loss_accuracy_and_streaming():
    """A masked LM: labels -100 where not masked; its own loss (no shift) and token accuracy over the masked
    positions, streamed over two batches of different mask counts."""
    model, ids = _bert(), _tokens(8, 10)
    gen = torch.Generator().manual_seed(3)
    masked = torch.rand(ids.shape, generator=gen) < torch.tensor([0.1] * 4 + [0.6] * 4)[:, None]
    masked[:, 0] = True
    labels = torch.where(masked, ids, torch.full_like(ids, -100))
    batches = [{"input_ids": ids[:4], "labels": labels[:4]}, {"input_ids": ids[4:], "labels": labels[4:]}]
    s = lscape.surface(model, None, batches, directions="filter", grid=[0.0, 0.25])
    with torch.no_grad():
        out = model(input_ids=ids, labels=labels)
    hit = (out.logits.argmax(-1) == labels) & masked
    assert s["train_loss"][0, 0] == pytest.approx(float(out.loss), rel=1e-5)
    assert s["train_acc"][0, 0] == pytest.approx(float(hit.sum() / masked.sum()), abs=1e-12)
    L = lscape.Landscape.from_module(model, None, batches)
    assert not L.objective.shift


def test_vit_own_loss_surface_and_accuracy():
    model = _hf_vit()
    gen = torch.Generator().manual_seed(2)
    X, Y = torch.randn(10, 1, 8, 8, generator=gen), torch.randint(0, 5, (10,), generator=gen)
    data = {"pixel_values": X, "labels": Y}
    s = lscape.surface(model, None, data, directions="filter", grid=3)
    want = _plain_grid(model, lambda m, x: m(pixel_values=x, labels=Y).loss, X, s.directions, s.x)
    np.testing.assert_allclose(s["train_loss"], want, rtol=1e-5)
    with torch.no_grad():
        hit = (model(pixel_values=X).logits.argmax(-1) == Y).double().mean()
    center = s.x.tolist().index(0.0)
    assert s["train_acc"][center, center] == pytest.approx(float(hit))


def test_hessian_of_a_hugging_face_model_equals_autograd_eager():
    """Top eigenvalue and a product of an eager-attention GPT-2 in float64 equal torch.autograd's."""
    model, ids = _gpt2("eager").double(), _tokens(3, 8)
    L = lscape.Landscape.from_module(model, _logits_ce, (ids, ids))  # (its own loss rounds to float32)
    layout = FlatLayout.of(model)
    theta = layout.flatten(model).double()
    v = torch.randn(layout.dim, generator=torch.Generator().manual_seed(5), dtype=torch.float64)

    def f(t):
        return _logits_ce(torch.func.functional_call(model, layout.split(t), (ids,)), ids)
    want = torch.autograd.functional.hvp(f, theta, v)[1]
    got = probes.hvp(L, theta, v[None])[0]
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)


def test_hessian_through_sdpa_equals_the_eager_twin():
    """The issue's wall: torch cannot differentiate F.scaled_dot_product_attention's fused backward (first
    asserted, so the test shows the failure it removes); lscape's products through it equal the eager
    twin's autograd in float64, and so does the top eigenvalue."""
    sdpa, eager = _gpt2("sdpa").double(), _gpt2("eager").double()
    ids = _tokens(3, 8)
    layout = FlatLayout.of(sdpa)
    theta = layout.flatten(sdpa).double()
    v = torch.randn(layout.dim, generator=torch.Generator().manual_seed(5), dtype=torch.float64)

    def f(model):
        return lambda t: _logits_ce(torch.func.functional_call(model, layout.split(t), (ids,)), ids)
    with pytest.raises(RuntimeError, match="derivative for .*scaled_dot_product"):
        torch.autograd.functional.hvp(f(sdpa), theta, v)
    want = torch.autograd.functional.hvp(f(eager), theta, v)[1]
    L = lscape.Landscape.from_module(sdpa, _logits_ce, (ids, ids))
    torch.testing.assert_close(probes.hvp(L, theta, v[None])[0], want, rtol=1e-9, atol=1e-11)
    top = probes.hessian_eigs(L, theta, k=1)
    top_eager = probes.hessian_eigs(lscape.Landscape.from_module(eager, _logits_ce, (ids, ids)), theta, k=1)
    torch.testing.assert_close(top, top_eager, rtol=1e-8, atol=0)


def _fine_tunes(base: nn.Module, batch: dict, noise: float, steps: int) -> list[torch.Tensor]:
    """Two fine-tunes of one model (seeds 0 and 1: a perturbation, then Adam on its own loss), flat."""
    ends = []
    for seed in (0, 1):
        m = copy.deepcopy(base)
        torch.manual_seed(seed)
        with torch.no_grad():
            for p in m.parameters():
                p.add_(noise * torch.randn_like(p))
        opt = torch.optim.Adam(m.parameters(), 3e-3)
        for _ in range(steps):
            opt.zero_grad()
            m(**batch).loss.backward()
            opt.step()
        ends.append(FlatLayout.of(m).flatten(m))
    return ends


def test_neb_between_two_fine_tunes_converges():
    base, ids = _gpt2(), _tokens(6, 8)
    data = {"input_ids": ids, "labels": ids}
    ends = _fine_tunes(base, data, 0.01, 25)
    L = lscape.Landscape.from_module(base, None, data)
    res = lscape.neb(L, ends[0], ends[1], n_images=5, steps=60, fmax=0.5, climb=False, maxstep=0.05)
    e = res.energies[0].double()
    torch.testing.assert_close(e[0], L.loss(ends[0][None])[0].double(), rtol=1e-6, atol=0)
    assert bool(torch.isfinite(e).all()) and not bool(res.diverged[0])
    assert float(res.fmax[0]) < 0.5 * float(res.fmax_history.reshape(-1, 1)[0, 0] if res.fmax_history.dim() == 1
                                            else res.fmax_history[0, 0])


def test_tied_weights_count_once_and_checkpoints_load(tmp_path):
    model = _gpt2()
    layout = FlatLayout.of(model)
    assert "lm_head.weight" not in layout.names and model.lm_head.weight is model.transformer.wte.weight
    assert layout.dim == sum(p.numel() for p in model.parameters())
    thetas = []
    for k in range(3):  # three points of a "training run"
        m = copy.deepcopy(model)
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.01 * k * k * torch.randn_like(p))
        thetas.append(layout.flatten(m).double().numpy())
        if k == 0:
            m.save_pretrained(tmp_path / "ckpt-1")  # safetensors: the tied head saved once
        elif k == 1:
            m.save_pretrained(tmp_path / "ckpt-2", safe_serialization=False)
        else:  # a Lightning checkpoint of a LightningModule holding the network as self.model
            sd = {f"model.{n}": v for n, v in m.state_dict().items()}
            sd["model.transformer.h.0.mlp._extra_state"] = torch.zeros(2)
            torch.save({"state_dict": sd, "epoch": 3}, tmp_path / "ckpt-3.ckpt")
    for k, path in enumerate(("ckpt-1", "ckpt-2", "ckpt-3.ckpt")):
        np.testing.assert_array_equal(checkpoints.load_checkpoint(str(tmp_path / path), model), thetas[k])
    got, names = checkpoints.load_checkpoints(str(tmp_path), model)
    np.testing.assert_array_equal(got, np.stack(thetas))
    assert [n.rsplit("/", 1)[1] for n in names] == ["ckpt-1", "ckpt-2", "ckpt-3.ckpt"]
    dirs = pca_directions(str(tmp_path), model=model)
    assert dirs.vectors.shape == (2, layout.dim) and dirs.trajectory.shape == (3, 2)
    assert random_directions(model, 2, seed=0).vectors.shape == (2, layout.dim)


def test_reference_nanogpt_surface_and_hvp_with_sdpa():
    """The reference nanoGPT (F.scaled_dot_product_attention) on shifted character targets: its surface
    equals a plain loop; a Hessian-vector product equals autograd on its math-attention twin."""
    gen = torch.Generator().manual_seed(0)
    seq = torch.randint(0, 11, (6, 9), generator=gen)
    X, Y = seq[:, :-1], seq[:, 1:]
    model = nanogpt(vocab_size=11, context=8, d_model=16, n_layers=2, n_heads=2)
    s = lscape.surface(model, token_cross_entropy, (X, Y), directions="filter", grid=3)
    want = _plain_grid(model, lambda m, x: token_cross_entropy(m(x), Y), X, s.directions, s.x)
    np.testing.assert_allclose(s["train_loss"], want, rtol=1e-5)
    with torch.no_grad():
        acc = float((model(X).argmax(-1) == Y).double().mean())
    assert s["train_acc"][1, 1] == pytest.approx(acc)
    model, twin = model.double(), nanogpt(vocab_size=11, context=8, d_model=16, n_layers=2, n_heads=2,
                                          attention="math").double()
    layout = FlatLayout.of(model)
    theta = layout.flatten(model)
    torch.testing.assert_close(theta, layout.flatten(twin))  # the same weights: the same function
    v = torch.randn(layout.dim, generator=gen, dtype=torch.float64)
    want = torch.autograd.functional.hvp(
        lambda t: token_cross_entropy(torch.func.functional_call(twin, layout.split(t), (X,)), Y), theta, v)[1]
    L = lscape.Landscape.from_module(model, token_cross_entropy, (X, Y))
    torch.testing.assert_close(probes.hvp(L, theta, v[None])[0], want, rtol=1e-9, atol=1e-11)


# ---- named errors before any work --------------------------------------------------------------------------
def test_named_errors_for_malformed_transformer_batches():
    model, ids = _gpt2(), _tokens(4)
    with pytest.raises(ValueError, match=r"data: .*called as model\(\*\*inputs\)"):  # a batch the model refuses
        lscape.Landscape.from_module(model, None, {"input_idz": ids, "labels": ids})
    with pytest.raises(ValueError, match="without a loss"):  # loss_fn=None, no labels: no loss
        lscape.Landscape.from_module(model, None, ({"input_ids": ids}, None))
    with pytest.raises(ValueError, match="mapping without 'labels'"):  # a loss_fn needs targets
        lscape.Landscape.from_module(model, _logits_ce, {"input_ids": ids})
    with pytest.raises(ValueError, match="no counted target"):
        lscape.surface(model, None, {"input_ids": ids, "labels": torch.full_like(ids, -100)}, directions="filter",
                       grid=2)
    with pytest.raises(ValueError, match="as many targets as inputs"):
        lscape.Landscape.from_module(model, _logits_ce, (ids, ids[:2]))

    class NoLogits(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(3))

        def forward(self, input_ids, labels=None):
            return {"hidden": self.w * 2}
    with pytest.raises(ValueError, match="without a loss"):
        lscape.Landscape.from_module(NoLogits(), None, {"input_ids": ids, "labels": ids})
    with pytest.raises(ValueError, match=r"targets: .*expected shape"):  # targets that fit no output
        lscape.Landscape.from_module(nanogpt(vocab_size=V, context=12, d_model=16, n_layers=1, n_heads=2),
                                     token_cross_entropy, (ids, ids[:, :5]))
    with pytest.raises(TypeError, match="loss_fn"):
        lscape.surface(model, "ce", (ids, ids), directions="filter", grid=2)


def test_vit_reference_model_on_images():
    model = vit(image_size=8, patch_size=4, channels=1, num_classes=3, d_model=16, n_layers=1, n_heads=2)
    gen = torch.Generator().manual_seed(1)
    X, Y = torch.rand(12, 64, generator=gen), torch.randint(0, 3, (12,), generator=gen)
    s = lscape.surface(model, F.cross_entropy, (X, Y), directions="filter", grid=3, test_data=(X[:5], Y[:5]))
    want = _plain_grid(model, lambda m, x: F.cross_entropy(m(x), Y), X, s.directions, s.x)
    np.testing.assert_allclose(s["train_loss"], want, rtol=1e-5)
    assert set(s.values) == {"train_loss", "train_acc", "test_loss", "test_acc"}


# ---- each Hugging Face family: causal LM, masked LM, image classification ---------------------------------
def _hf(name: str, attn: str = "sdpa"):
    """(model, its batch with labels inside, a float64-exact loss on its logits, that loss's (inputs, targets)
    batch): GPT-2 (causal LM), BERT (masked LM, labels -100 where not masked), ViT (classification)."""
    gen = torch.Generator().manual_seed(7)
    if name == "gpt2":
        model, ids = _gpt2(attn), _tokens(4, 8)
        return model, {"input_ids": ids, "labels": ids}, _logits_ce, (ids, ids)
    if name == "bert":
        torch.manual_seed(0)
        cfg = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                      intermediate_size=64, vocab_size=V, max_position_embeddings=16,
                                      attn_implementation=attn)
        model, ids = transformers.BertForMaskedLM(cfg).eval(), _tokens(4, 8)
        labels = torch.where(torch.rand(ids.shape, generator=gen) < 0.3, ids, torch.full_like(ids, -100))
        labels[:, 0] = ids[:, 0]

        def mlm(out, y):
            return F.cross_entropy(out.logits.reshape(-1, V), y.reshape(-1), ignore_index=-100)
        return model, {"input_ids": ids, "labels": labels}, mlm, (ids, labels)
    torch.manual_seed(0)
    cfg = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                 image_size=8, patch_size=4, num_channels=1, num_labels=5, attn_implementation=attn)
    model = transformers.ViTForImageClassification(cfg).eval()
    X, Y = torch.randn(6, 1, 8, 8, generator=gen), torch.randint(0, 5, (6,), generator=gen)

    def cls(out, y):
        return F.cross_entropy(out.logits, y)
    return model, {"pixel_values": X, "labels": Y}, cls, (X, Y)


HF = ["gpt2", "bert", "vit"]


@pytest.mark.parametrize("name", HF)
def test_hf_surface_equals_a_plain_loop(name):
    model, batch, _, _ = _hf(name)
    s = lscape.surface(model, None, batch, directions="filter", grid=3)
    want = _plain_grid(model, lambda m, b: m(**b).loss, batch, s.directions, s.x)
    np.testing.assert_allclose(s["train_loss"], want, rtol=1e-5)


@pytest.mark.parametrize("name", HF)
def test_hf_hessian_products_through_sdpa_equal_the_eager_twin(name):
    model, _, loss, (X, Y) = _hf(name, "sdpa")
    twin = _hf(name, "eager")[0].double()
    model = model.double()
    X = X.double() if X.is_floating_point() else X
    layout = FlatLayout.of(model)
    theta = layout.flatten(model)
    torch.testing.assert_close(theta, layout.flatten(twin))
    v = torch.randn(layout.dim, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    want = torch.autograd.functional.hvp(
        lambda t: loss(torch.func.functional_call(twin, layout.split(t), (X,)), Y), theta, v)[1]
    L = lscape.Landscape.from_module(model, loss, (X, Y))
    # ViT's eager attention takes its softmax in float32 (transformers upcasts, then casts back): its twin is
    # float32-exact only
    tol = 1e-6 if name == "vit" else 1e-9
    torch.testing.assert_close(probes.hvp(L, theta, v[None])[0], want, rtol=tol, atol=tol * float(want.abs().max()))


@pytest.mark.parametrize("name", HF)
def test_hf_neb_between_two_fine_tunes_and_intrinsic_dimension(name):
    base, batch, _, _ = _hf(name)
    ends = _fine_tunes(base, batch, 0.02, 15)
    L = lscape.Landscape.from_module(base, None, batch)
    res = lscape.neb(L, ends[0], ends[1], n_images=4, steps=40, fmax=0.5, climb=False, maxstep=0.05)
    assert not bool(res.diverged[0]) and float(res.fmax[0]) < float(res.fmax_history[0, 0])
    torch.testing.assert_close(res.energies[0, -1].double(), L.loss(ends[1][None])[0].double(), rtol=1e-6, atol=0)
    res = lscape.intrinsic_dimension(base, None, batch, dims=[8], epochs=2, batch_size=4, lr=1e-2, baseline=0.5)
    assert res.scores.shape == (1, 1) and 0.0 <= float(res.scores[0, 0]) <= 1.0
