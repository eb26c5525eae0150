"""The intrinsic-dimension reproduction (Li et al. 2018) at smoke scale: end to end, an interrupted run
resumed to the same numbers, and the paper scale's networks at Li et al.'s sizes."""
import json

import numpy as np
import pytest
import torch
from conftest import assert_run_outputs, smoke_run_fixture
from lscape import cli, experiments, intrinsic
from lscape.experiments import common
from lscape.experiments import intrinsic_dimension as idim

smoke_run = smoke_run_fixture(idim.run, "idim_smoke")


def test_smoke_writes_everything(smoke_run):
    out, summary = smoke_run
    cfg = idim.SCALES["smoke"]
    assert_run_outputs(out, summary)
    assert json.loads((out / "summary.json").read_text())["networks"].keys() == set(cfg.networks)
    with np.load(out / "results.npz") as r:
        for net in cfg.networks:
            dims = getattr(cfg, f"{net}_dims")
            epochs = getattr(cfg, f"{net}_epochs")
            np.testing.assert_array_equal(r[f"{net}_dims"], dims)
            assert r[f"{net}_scores"].shape == (len(dims), cfg.seeds)
            assert r[f"{net}_history"].shape == (len(dims), cfg.seeds, epochs)
            assert r[f"{net}_baseline_history"].shape == (cfg.seeds, epochs)
            # the last epoch of every curve is the score the sweep reads
            np.testing.assert_array_equal(r[f"{net}_history"][:, :, -1], r[f"{net}_scores"])
            np.testing.assert_array_equal(r[f"{net}_baseline_history"][:, -1], r[f"{net}_baseline_scores"])
            s = summary["networks"][net]
            assert s["D"] == int(r[f"{net}_D"]) and s["threshold"] == pytest.approx(0.9)
            assert s["baseline_acc"] == pytest.approx(float(r[f"{net}_baseline_scores"].mean()))
            assert len(s["per_seed"]) == cfg.seeds and len(s["acc_gain_last_20pct_epochs"]) == len(dims)
            # what storage="auto" chose, by concrete name, for each swept d (D and d this small: the stored P)
            assert s["storage"] == "auto" and s["storage_chosen"] == {str(d): "indices" for d in dims}
            assert r[f"{net}_storage"].tolist() == ["indices"] * len(dims)
            # the reading: d_int90 is the first d whose mean reaches the target, or None
            mean = r[f"{net}_scores"].mean(axis=1)
            hit = [d for d, m in zip(dims, mean, strict=True) if m >= s["threshold"]]
            assert s["d_int90"] == (hit[0] if hit else None)
            rel = s["relative"]
            hit = [d for d, m in zip(dims, mean, strict=True) if m >= rel["threshold"]]
            assert rel["d_int90"] == (hit[0] if hit else None)
    # training in a subspace works: the FC net's largest d beats its smallest, and the full space beats chance
    fc = summary["networks"]["fc"]
    assert fc["mean_acc"][-1] > fc["mean_acc"][0] + 0.2 and fc["baseline_acc"] > 0.5


def test_interrupted_run_resumes_to_the_same_results(smoke_run, tmp_path):
    ref_out, _ = smoke_run
    out = tmp_path / "run"
    with pytest.raises(common.RunInterrupted):
        idim.run("smoke", out, progress=False, figures=False, stop_after_chunks=3)
    assert (out / "checkpoints" / "fc.npz").is_file() and not (out / "results.npz").exists()
    with pytest.raises(FileExistsError):  # a folder with checkpoints is only continued when asked to
        idim.run("smoke", out, progress=False, figures=False)
    idim.run("smoke", out, resume=True, progress=False, figures=False)
    with np.load(ref_out / "results.npz") as a, np.load(out / "results.npz") as b:
        assert sorted(a.files) == sorted(b.files)
        for k in a.files:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_paper_networks_have_li_et_al_sizes_and_init():
    """MNIST's 784-200-200-10 FC net (D = 199,210) and LeNet-5 (D = 44,426), he_normal kernels with
    zero biases, each seed its own draw."""
    cfg = idim.config("paper")
    mnist_like = idim.datasets.Split(torch.zeros(2, 784), torch.tensor([0, 9]), torch.zeros(1, 784),
                                     torch.tensor([3]))
    for net, D in (("fc", 199_210), ("lenet", 44_426)):
        make = idim.model_factory(cfg, net, mnist_like)
        torch.manual_seed(0)
        a = make()
        assert sum(p.numel() for p in a.parameters()) == D
        assert a(torch.zeros(5, 784)).shape == (5, 10)
        torch.manual_seed(1)
        b = make()
        for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
            if name.endswith("bias"):
                assert not p.any(), name
            else:
                assert not torch.equal(p, q), name
                # Keras 2.1.5's he_normal: std sqrt(2 / fan_in), truncated at 2 std, not rescaled
                std = (2 / p[0].numel()) ** 0.5
                assert p.abs().max().item() <= 2 * std, name
                assert p.std().item() == pytest.approx(0.8796 * std, rel=0.25 if p.numel() < 1000 else 0.03), name
    # the official budget: 100 epochs, 3 seeds, the full-space baselines, d dense on both sides of Li et al.'s
    assert cfg.dataset == "mnist" and cfg.seeds == 3 and cfg.full_space
    assert (cfg.lr, cfg.beta2, cfg.l2, cfg.batch) == (1e-3, 0.99, 1e-4, 128)
    assert (cfg.fc_epochs, cfg.lenet_epochs) == (100, 100)
    assert cfg.fc_dims == (600, 700, 750, 800, 900, 1000) and cfg.lenet_dims == (200, 250, 290, 350, 400)
    assert cfg.storage == "auto"
    for net, D in (("fc", 199_210), ("lenet", 44_426)):
        dims = getattr(cfg, f"{net}_dims")
        assert min(dims) < idim.LI_ET_AL[net] < max(dims)
        # "auto" keeps the stored sparse P at every swept d (what the summary then records)
        assert {intrinsic._storage(cfg.storage, D, d) for d in dims} == {"indices"}


def test_cli_set_overrides_reach_the_config_typed(monkeypatch, capsys, tmp_path):
    seen = {}

    def fake_run(**kw):
        seen.update(kw)
        cfg = idim.config(kw.pop("scale"), **{k: v for k, v in kw.items() if k in idim.Config.__dataclass_fields__})
        seen["cfg"] = cfg
        return {"figures": []}

    monkeypatch.setattr(idim, "run", fake_run)
    rc = cli.main(["reproduce", "intrinsic-dimension", "--scale", "paper", "--out", str(tmp_path / "r"),
                   "--set", "fc_dims=600,800", "--set", "lenet_epochs=100", "--set", "networks=lenet",
                   "--set", "threshold=0.85"])
    assert rc == 0, capsys.readouterr().err
    cfg = seen["cfg"]
    assert cfg.fc_dims == (600, 800) and cfg.lenet_epochs == 100 and cfg.networks == ("lenet",)
    assert cfg.threshold == 0.85 and cfg.fc_epochs == idim.SCALES["paper"].fc_epochs  # the rest as the scale
    for bad, why in (("fc_epoch=3", "--set: got 'fc_epoch=3', expected FIELD=VALUE with FIELD one of"),
                     ("fc_epochs", "--set: got 'fc_epochs', expected FIELD=VALUE"),
                     ("fc_epochs=ten", "--set: fc_epochs='ten', expected an integer"),
                     ("fc_dims=500,x", "--set: fc_dims='x', expected an integer"),
                     ("scale=paper", "--set: got 'scale=paper'")):
        rc = cli.main(["reproduce", "intrinsic-dimension", "--scale", "paper", "--out", str(tmp_path / "r"),
                       "--set", bad])
        assert rc == 2 and why in capsys.readouterr().err, bad


def test_cli_resume_hint_repeats_the_overrides(monkeypatch, capsys, tmp_path):
    def interrupted(**kw):
        raise common.RunInterrupted("stopped")

    monkeypatch.setattr(idim, "run", interrupted)
    out = str(tmp_path / "r")
    rc = cli.main(["reproduce", "intrinsic-dimension", "--scale", "smoke", "--out", out, "--set", "fc_epochs=2"])
    assert rc == 130
    assert (f"`lscape reproduce intrinsic-dimension --scale smoke --set fc_epochs=2 --out {out} --resume`"
            in capsys.readouterr().err)


def test_registered_and_bad_network_named():
    assert experiments.get("intrinsic-dimension") is idim
    with pytest.raises(ValueError, match="networks: got 'resnet'"):
        idim.run("smoke", "unused", networks=("resnet",), progress=False, figures=False)


def test_without_the_full_space_runs_only_li_et_als_reading_is_made(tmp_path):
    """full_space=False: no d = D runs (a CPU that cannot afford them); d_int90 at the absolute threshold
    as usual, no measured baseline, no relative reading, and the figures still drawn."""
    out = tmp_path / "run"
    summary = idim.run("smoke", out, progress=False, networks=("fc",), fc_dims=(8, 512), full_space=False)
    fc = summary["networks"]["fc"]
    assert fc["baseline_acc"] is None and fc["baseline_acc_per_seed"] == [] and fc["relative"] is None
    assert fc["baseline_acc_gain_last_20pct_epochs"] is None
    with np.load(out / "results.npz") as r:
        mean = r["fc_scores"].mean(axis=1)
        assert r["fc_baseline_scores"].size == 0
    hit = [d for d, m in zip((8, 512), mean, strict=True) if m >= 0.9]
    assert fc["d_int90"] == (hit[0] if hit else None)
    assert sorted(summary["figures"]) == ["fig1_accuracy_vs_d.png", "fig2_epochs.png"]
