"""Checkpoints in (lscape.checkpoints): every input form of pca_directions and plane_through, the named errors,
and the framed plane: an int grid spans the trajectory or points, which the Surface keeps, saves and draws."""
from __future__ import annotations

import importlib.util
import os

import lscape
import numpy as np
import pytest
import torch
from lscape.checkpoints import CheckpointMismatchError, checkpoint_files, load_checkpoint, load_checkpoints
from lscape.directions import pca_directions, plane_through
from torch import nn


def net(seed: int = 0) -> nn.Module:
    """A small CNN with BatchNorm: its state_dict holds buffers (running stats) besides the parameters."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(),
                         nn.Linear(2 * 4 * 4, 3))


def flat(m: nn.Module) -> np.ndarray:
    return torch.nn.utils.parameters_to_vector(m.parameters()).detach().double().numpy()


@pytest.fixture
def run():
    """A made-up training run: 12 models of one architecture, their flat vectors and state_dicts."""
    models = [net(seed) for seed in range(12)]
    for k, m in enumerate(models):  # a drift, so that the run has a direction of most variance
        with torch.no_grad():
            for p in m.parameters():
                p.mul_(0.3).add_(0.05 * k)
            m[1].running_mean.fill_(float(k))  # buffers differ per checkpoint and must not matter
    return models, np.stack([flat(m) for m in models]), [m.state_dict() for m in models]


def save_run(folder, states, name=lambda k: f"epoch_{k}.pt", wrap=lambda sd, k: sd):
    """torch.save each state_dict as a training loop would; returns the paths in training order."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, sd in enumerate(states):
        paths.append(folder / name(k))
        torch.save(wrap(sd, k), paths[-1])
    return paths


def same_plane(a, b):
    np.testing.assert_allclose(a.vectors, b.vectors, atol=1e-12)
    np.testing.assert_allclose(a.center, b.center, atol=1e-12)
    np.testing.assert_allclose(a.trajectory, b.trajectory, atol=1e-10)


# ---- every input form gives the same flat vector -----------------------------------------------------------
def test_every_single_form_gives_the_parameters(run, tmp_path):
    models, thetas, states = run
    model, want = models[0], thetas[3]
    sd = states[3]
    parallel = {"module." + k: v for k, v in sd.items()}
    torch.save({"epoch": 3, "model": sd, "optimizer": {"lr": 0.1}}, tmp_path / "nested.pt")
    for form in (models[3], torch.as_tensor(want), want, list(want), sd, {"state_dict": sd}, {"model": sd},
                 {"model_state_dict": sd}, parallel, {"state_dict": parallel}, str(tmp_path / "nested.pt"),
                 tmp_path / "nested.pt", nn.DataParallel(models[3])):
        got = load_checkpoint(form, model)
        assert got.dtype == np.float64 and got.shape == want.shape
        np.testing.assert_array_equal(got, want)


def test_buffers_are_ignored(run):
    models, thetas, states = run
    no_buffers = {k: v for k, v in states[2].items() if "running" not in k and "num_batches" not in k}
    np.testing.assert_array_equal(load_checkpoint(no_buffers, models[0]), thetas[2])
    np.testing.assert_array_equal(load_checkpoint(states[2], models[0]), thetas[2])


def test_tied_parameters_and_a_wrapped_model():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc, self.dec = nn.Linear(4, 4), nn.Linear(4, 4)
            self.dec.weight = self.enc.weight   # state_dict has both names, named_parameters one

    m = Tied()
    np.testing.assert_array_equal(load_checkpoint(m.state_dict(), m), flat(m))
    wrapped = nn.DataParallel(m)                 # the model's names carry "module." too
    np.testing.assert_array_equal(load_checkpoint(m.state_dict(), wrapped), flat(m))


# ---- a run: lists, folders, globs, order -------------------------------------------------------------------
def test_pca_from_a_folder_equals_pca_from_the_vectors_in_order(run, tmp_path):
    models, thetas, states = run
    ref = pca_directions(list(thetas), model=models[0])
    # written out of order, with names whose plain sort puts epoch_10 before epoch_2
    order = np.random.default_rng(0).permutation(len(states))
    for k in order:
        torch.save({"epoch": int(k), "state_dict": states[k]}, tmp_path / f"epoch_{k}.pt")
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    d = pca_directions(tmp_path, model=models[0])
    same_plane(d, ref)
    assert [os.path.basename(p) for p in d.info["checkpoints"]] == [f"epoch_{k}.pt" for k in range(12)]
    same_plane(pca_directions(str(tmp_path / "epoch_*.pt"), model=models[0]), ref)       # a glob
    for forms in (models, states, [torch.as_tensor(t) for t in thetas],
                  [tmp_path / f"epoch_{k}.pt" for k in range(12)]):
        same_plane(pca_directions(forms, model=models[0]), ref)


def test_natural_order_and_a_users_key(run, tmp_path):
    models, thetas, states = run
    # step numbers in the names, zero-padded nowhere; a second number (the loss) that must not lead the sort
    save_run(tmp_path, states, name=lambda k: f"run1_step{10 * k}_loss{99 - k}.pth")
    files = checkpoint_files(tmp_path)
    assert [int(os.path.basename(f).split("_")[1][4:]) for f in files] == [10 * k for k in range(12)]
    # a key of the user's: by the number after "loss", so the run reversed
    by_loss = checkpoint_files(tmp_path, sort_key=lambda p: int(p.rsplit("loss", 1)[1].split(".")[0]))
    assert by_loss == files[::-1]
    d = pca_directions(tmp_path, model=models[0], sort_key=lambda p: -int(p.rsplit("step", 1)[1].split("_")[0]))
    same_plane(d, pca_directions(list(thetas[::-1]), model=models[0]))


def test_plane_through_checkpoint_files(run, tmp_path):
    models, thetas, states = run
    paths = save_run(tmp_path, states[:3], wrap=lambda sd, k: {"model": {"module." + n: v for n, v in sd.items()}})
    d = plane_through(*paths, model=models[0])
    ref = plane_through(*models[:3], model=models[0])
    np.testing.assert_allclose(d.vectors, ref.vectors)
    np.testing.assert_allclose(d.points, [[0, 0], [1, 0], [0, 1]], atol=1e-9)
    assert d.trajectory is None


# ---- named errors ----------------------------------------------------------------------------------------
def test_a_checkpoint_of_another_model_lists_what_differs(run, tmp_path):
    models, _, states = run
    sd = dict(states[0])
    del sd["0.bias"]
    sd["head.weight"] = torch.zeros(3)
    sd["4.weight"] = torch.zeros(5, 32)
    with pytest.raises(CheckpointMismatchError, match=r"missing \(1\): 0\.bias.*extra \(1\): head\.weight.*"
                                                      r"shape differs \(1\): 4\.weight \(5, 32\) \(model \(3, 32\)\)"):
        load_checkpoint(sd, models[0])
    torch.save(sd, tmp_path / "other.pt")
    with pytest.raises(CheckpointMismatchError, match=r"theta1 \(.*other\.pt'\)"):
        plane_through(models[0], tmp_path / "other.pt", models[2], model=models[0])
    big = {f"layer{i}.weight": torch.zeros(1) for i in range(20)}
    with pytest.raises(CheckpointMismatchError, match=r"extra \(20\): .* and 12 more"):
        load_checkpoint({**states[0], **big}, models[0])


def test_bad_inputs_are_named(run, tmp_path):
    models, thetas, states = run
    model = models[0]
    with pytest.raises(ValueError, match=r"checkpoints: got 2 .*expected at least 3"):
        pca_directions(list(thetas[:2]), model=model)
    save_run(tmp_path / "two", states[:2])
    with pytest.raises(ValueError, match=r"checkpoints: got 2 \(.*epoch_0\.pt.*expected at least 3"):
        pca_directions(tmp_path / "two", model=model)
    with pytest.raises(ValueError, match=r"checkpoints\[0\]: got tensor of shape \(5,\).*expected a finite floating "
                                         r"vector of shape \(123,\)"):
        pca_directions([np.zeros(5)] * 3, model=model)
    with pytest.raises(TypeError, match=r"checkpoints\[1\]: got int, expected a module"):
        pca_directions([thetas[0], 7, thetas[2]], model=model)
    rows = pca_directions(torch.as_tensor(np.stack(thetas)), model=model)  # a (T, D) tensor: one checkpoint a row
    np.testing.assert_array_equal(rows.vectors, pca_directions(list(thetas), model=model).vectors)
    with pytest.raises(TypeError, match=r"checkpoints: got Tensor, expected a folder"):
        pca_directions(torch.as_tensor(thetas[0]), model=model)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"checkpoints: got folder .*empty.* no checkpoint file"):
        pca_directions(tmp_path / "empty", model=model)
    with pytest.raises(FileNotFoundError, match=r"got glob .*nothing_\*\.pt"):
        load_checkpoints(str(tmp_path / "nothing_*.pt"), model)
    with pytest.raises(ValueError, match=r"checkpoints: got .*epoch_0\.pt', expected a folder or a glob"):
        pca_directions(str(tmp_path / "two" / "epoch_0.pt"), model=model)
    with pytest.raises(FileNotFoundError, match=r"theta2: got .*missing\.pt', expected an existing"):
        plane_through(thetas[0], thetas[1], tmp_path / "missing.pt", model=model)
    with pytest.raises(ValueError, match=r"expected a state_dict .* under \('state_dict'"):
        load_checkpoint({"epoch": 3, "optimizer": {"lr": 0.1}}, model)


class NotWeights:  # pickled as an object: weights_only loading must refuse it rather than run its code
    pass


def test_loading_is_weights_only(run, tmp_path):
    models, _, states = run
    torch.save({"state_dict": states[0], "extra": NotWeights()}, tmp_path / "pickle.pt")
    with pytest.raises(ValueError, match=r"torch\.load\(weights_only=True\) could not read it"):
        load_checkpoint(tmp_path / "pickle.pt", models[0])
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"junk\.pt.*could not read it"):
        load_checkpoint(tmp_path / "junk.pt", models[0])


# ---- the framed plane ------------------------------------------------------------------------------------
def tiny_surface(directions, grid, model):
    torch.manual_seed(0)
    X, Y = torch.randn(16, 1, 4, 4), torch.randint(0, 3, (16,))
    model.eval()
    return lscape.surface(model, nn.CrossEntropyLoss(), (X, Y), directions=directions, grid=grid)


def test_an_int_grid_covers_the_trajectory(run):
    models, thetas, _ = run
    d = pca_directions(list(thetas), model=models[0])
    lo, hi = d.trajectory.min(0), d.trajectory.max(0)
    assert hi[0] - lo[0] > 2.0  # wider than [-1, 1], the grid an int gives without the trajectory
    s = tiny_surface(d, 5, models[-1])
    for ax, a, b in ((s.x, lo[0], hi[0]), (s.y, lo[1], hi[1])):
        span = b - a
        assert ax.min() < a - 0.1 * span and ax.max() > b + 0.1 * span  # a margin on each side
        assert ax.min() > a - 0.5 * span and ax.max() < b + 0.5 * span  # not a speck in a huge frame
    np.testing.assert_allclose(s.trajectory, d.trajectory)
    assert np.isfinite(s.values["train_loss"]).all()
    s2 = tiny_surface(d, (4, 6), models[-1])                            # a pair of ints: the same frame
    assert s2.x.shape == (4,) and s2.y.shape == (6,)
    np.testing.assert_allclose([s2.x[0], s2.x[-1], s2.y[0], s2.y[-1]], [s.x[0], s.x[-1], s.y[0], s.y[-1]])


def test_explicit_coordinates_are_kept(run):
    models, thetas, _ = run
    d = pca_directions(list(thetas), model=models[0])
    ax = np.array([-0.5, 0.0, 0.25])
    s = tiny_surface(d, ax, models[-1])
    np.testing.assert_array_equal(s.x, ax)
    np.testing.assert_array_equal(s.y, ax)
    s = tiny_surface(d, (ax, np.array([1.0, 2.0])), models[-1])
    np.testing.assert_array_equal(s.y, [1.0, 2.0])
    # directions with no trajectory or points keep [-1, 1]
    s = tiny_surface(d.vectors, 3, models[-1])
    np.testing.assert_array_equal(s.x, [-1, 0, 1])


def test_the_points_frame_the_plane_and_survive_a_file(run, tmp_path):
    models, thetas, _ = run
    d = plane_through(*thetas[:3], model=models[0])
    s = tiny_surface(d, 7, models[0])
    assert s.x[0] < 0 < 1 < s.x[-1] and s.y[0] < 0 < 1 < s.y[-1]
    np.testing.assert_allclose(s.points, [[0, 0], [1, 0], [0, 1]], atol=1e-9)
    h5 = ["s.h5"] if importlib.util.find_spec("h5py") else []  # .h5 needs the `surface` extra
    for name in ["s.npz", *h5]:
        s.save(tmp_path / name)
        back = lscape.Surface.load(tmp_path / name)
        np.testing.assert_array_equal(back.points, s.points)
        assert back.trajectory is None
    p = pca_directions(list(thetas), model=models[0])
    s = tiny_surface(p, 4, models[-1])
    s.save(tmp_path / "p.npz")
    back = lscape.Surface.load(tmp_path / "p.npz")
    np.testing.assert_array_equal(back.trajectory, s.trajectory)
    assert back.points is None and back.info["checkpoints"] == [f"checkpoints[{k}]" for k in range(12)]


def test_contour_and_trajectory_draw_the_marks(run):
    pytest.importorskip("matplotlib", reason="lscape.plot needs matplotlib (the `plot` extra)")
    from lscape import plot

    models, thetas, _ = run
    s = tiny_surface(plane_through(*thetas[:3], model=models[0]), 5, models[0])
    fig = plot.contour(s)
    ax = fig.axes[0]
    def named(ax):
        return [t.get_text() for t in ax.texts if t.get_text().startswith("θ")]

    assert named(ax) == ["θ0", "θ1", "θ2"]
    assert "models" in [t.get_text() for t in ax.get_legend().get_texts()]
    assert not named(plot.contour(s, marks=False).axes[0])
    p = tiny_surface(pca_directions(list(thetas), model=models[0]), 4, models[-1])
    for fig in (plot.contour(p), plot.trajectory(p)):
        lines = [ln for ln in fig.axes[0].lines if ln.get_label() == "trajectory"]
        assert len(lines) == 1
        np.testing.assert_allclose(np.c_[lines[0].get_xdata(), lines[0].get_ydata()], p.trajectory)
