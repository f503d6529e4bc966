"""Datasets in their real on-disk formats, seeded stratified splits, on-device augmentation."""

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from dsearch.training.data import locate as D
from dsearch.training.config import DataConfig, TrainConfig, RunConfig
from dsearch.training.data import Data, load_data
from dsearch.training.data.splits import channel_stats, stratified_split
from dsearch.training.data.tensors import PAD, augment

from batches import white_data
from dsearch.errors import UserError

FASHION = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(not (FASHION / "train-images-idx3-ubyte.gz").exists(),
                                   reason="apt install dataset-fashion-mnist")


@pytest.fixture(autouse=True)
def _no_ambient_data(tmp_path, monkeypatch):
    """Only the folders a test names are searched: no $DSEARCH_DATA, home or ./data, no system dirs."""
    monkeypatch.delenv("DSEARCH_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(D, "SYSTEM_DIRS", {})


def images(n, c, s, seed=0):
    """n distinct uint8 images: image i has i % 256 in its top-left pixel."""
    x = np.random.default_rng(seed).integers(0, 256, size=(n, c, s, s), dtype=np.uint8)
    x[:, 0, 0, 0] = np.arange(n) % 256
    return x


def labels(n, k):
    return np.arange(n) % k


# ------------------------------------------------------------------ writers of the real formats

def write_cifar(folder: Path, per_batch=40, test=20, k=10, hundred=False):
    folder.mkdir(parents=True, exist_ok=True)
    key = "fine_labels" if hundred else "labels"
    names = ["train"] if hundred else [f"data_batch_{i}" for i in range(1, 6)]
    n = per_batch * (5 if hundred else 1)
    for b, name in enumerate(names + ["test"] if hundred else names + ["test_batch"]):
        m = test if name.startswith("test") else n
        d = {"batch_label": name, key: labels(m, k).tolist(), "data": images(m, 3, 32, seed=b).reshape(m, -1),
             "filenames": [f"{i}.png" for i in range(m)]}
        with open(folder / name, "wb") as f:
            pickle.dump(d, f, protocol=2)


def write_idx(path: Path, arr: np.ndarray, gz: bool):
    header = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    raw = header + arr.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(raw)
    else:
        path.write_bytes(raw)


def write_mnist(folder: Path, n=100, test=30, gz=True):
    folder.mkdir(parents=True, exist_ok=True)
    write_idx(folder / "train-images-idx3-ubyte", images(n, 1, 28)[:, 0], gz)
    write_idx(folder / "train-labels-idx1-ubyte", labels(n, 10), gz)
    write_idx(folder / "t10k-images-idx3-ubyte", images(test, 1, 28, seed=1)[:, 0], gz)
    write_idx(folder / "t10k-labels-idx1-ubyte", labels(test, 10), gz)


def write_svhn(folder: Path, n=60, extra=40, test=20):
    from scipy.io import savemat

    folder.mkdir(parents=True, exist_ok=True)
    for name, m, seed in (("train", n, 0), ("extra", extra, 1), ("test", test, 2)):
        x = images(m, 3, 32, seed).transpose(2, 3, 1, 0)            # the .mat layout: 32×32×3×N
        y = (labels(m, 10) + 1).reshape(-1, 1).astype(np.uint8)     # digits 1..10, 10 meaning 0
        savemat(str(folder / f"{name}_32x32.mat"), {"X": x, "y": y})


# ------------------------------------------------------------------ readers

def test_cifar10_pickle_batches_load_as_uint8_nchw_with_a_seeded_stratified_val_split(tmp_path):
    write_cifar(tmp_path / "cifar-10-batches-py")
    d = load_data(DataConfig(name="cifar10", root=tmp_path, val_size=50))
    assert (d.num_train, d.num_eval) == (150, 50)
    assert d.train_x.dtype == torch.uint8 and d.train_x.shape == (150, 3, 32, 32)
    assert d.train_y.dtype == torch.int64
    assert torch.bincount(d.eval_y).tolist() == [5] * 10
    assert (d.in_channels, d.image_size, d.num_classes, d.eval_split) == (3, 32, 10, "val")
    again = load_data(DataConfig(name="cifar10", root=tmp_path / "cifar-10-batches-py", val_size=50))
    assert torch.equal(again.eval_x, d.eval_x)                      # the folder itself works too
    other = load_data(DataConfig(name="cifar10", root=tmp_path, val_size=50, seed=1))
    assert not torch.equal(other.eval_x, d.eval_x)


def test_cifar10_pixels_keep_the_pickle_layout(tmp_path):
    write_cifar(tmp_path)
    d = load_data(DataConfig(name="cifar10", root=tmp_path, val_size=10), final=True)
    assert d.num_train == 200 and d.num_eval == 20 and d.eval_split == "test"
    assert torch.equal(d.eval_x, torch.from_numpy(images(20, 3, 32, seed=5)))  # test_batch is the 6th file


def test_cifar100_uses_fine_labels(tmp_path):
    write_cifar(tmp_path / "cifar-100-python", per_batch=40, test=100, k=100, hundred=True)
    d = load_data(DataConfig(name="cifar100", root=tmp_path, val_size=100))
    assert d.num_classes == 100 and (d.num_train, d.num_eval) == (100, 100)
    assert torch.bincount(d.eval_y, minlength=100).tolist() == [1] * 100


def test_svhn_mat_files_train_plus_extra_and_label_10_is_digit_0(tmp_path):
    write_svhn(tmp_path)
    d = load_data(DataConfig(name="svhn", root=tmp_path, val_size=20))
    assert (d.num_train, d.num_eval) == (80, 20)                    # 60 train + 40 extra, 20 held out
    assert not d.flip                                               # digits are not flipped
    f = load_data(DataConfig(name="svhn", root=tmp_path, val_size=20), final=True)
    assert f.num_train == 100
    assert f.eval_y.tolist() == ((labels(20, 10) + 1) % 10).tolist()   # 1..10 read back as 1..9, 0
    assert torch.equal(f.eval_x, torch.from_numpy(images(20, 3, 32, seed=2)))


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_idx_files_gzipped_or_raw_in_a_torchvision_root(tmp_path, gz):
    write_mnist(tmp_path / "MNIST" / "raw", gz=gz)
    d = load_data(DataConfig(name="mnist", root=tmp_path, val_size=20), final=True)
    assert d.train_x.shape == (100, 1, 28, 28) and d.num_eval == 30
    assert torch.equal(d.eval_x[:, 0], torch.from_numpy(images(30, 1, 28, seed=1)[:, 0]))
    assert not d.flip


def test_fashion_mnist_idx_files_directly_in_data_dir_are_flipped(tmp_path):
    write_mnist(tmp_path, gz=True)
    d = load_data(DataConfig(name="fashion_mnist", root=tmp_path, val_size=20))
    assert (d.num_train, d.num_eval, d.flip) == (80, 20, True)


def test_dsearch_data_env_is_searched(tmp_path, monkeypatch):
    write_mnist(tmp_path / "env" / "FashionMNIST" / "raw")
    monkeypatch.setenv("DSEARCH_DATA", str(tmp_path / "env"))
    assert load_data(DataConfig(name="fashion_mnist", val_size=20)).num_train == 80


def test_imagefolder_tree_for_imagenet(tmp_path):
    from PIL import Image

    for split, per in (("train", 4), ("val", 2)):
        for c in ("n01", "n02", "n03"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(per):
                Image.fromarray(images(1, 3, 40, seed=i)[0].transpose(1, 2, 0)).save(tmp_path / split / c / f"{i}.png")
    d = load_data(DataConfig(name="imagenet", root=tmp_path, val_size=3, num_workers=0))
    assert (d.num_train, d.num_eval, d.in_channels, d.image_size) == (9, 3, 3, 224)
    assert sorted(y for _, y in d.eval_samples) == [0, 1, 2]
    x, y = next(d.to("cpu").train_batches(4, epoch=0))
    assert x.shape == (4, 3, 224, 224) and x.dtype == torch.float32 and y.shape == (4,)
    assert [len(y) for _, y in d.eval_batches(2)] == [2, 1]
    f = load_data(DataConfig(name="imagenet", root=tmp_path, val_size=3, num_workers=0), final=True)
    assert (f.num_train, f.num_eval, f.eval_split) == (12, 6, "test")
    assert f.roots == (str(tmp_path / "train"), str(tmp_path / "val")) and f.missing_files() is None


def _folder(tmp_path, workers, augment=True):
    """8 distinct 24×24 PNGs of two classes as FolderData with 16×16 crops, nothing read yet."""
    from PIL import Image

    from dsearch.training.data import FolderData

    samples = []
    for i, x in enumerate(images(8, 3, 24)):
        Image.fromarray(x.transpose(1, 2, 0)).save(tmp_path / f"{i}.png")
        samples.append((str(tmp_path / f"{i}.png"), i % 2))
    return FolderData("imagenet", samples, samples[:4], 2, augment=augment, num_workers=workers, image_size=16)


def test_folder_data_keeps_one_pool_of_workers_for_every_epoch_and_evaluation(tmp_path, monkeypatch):
    """Worker processes start once per run, not at every epoch and every evaluation; as many as the run's CPU
    threads (a trial's CPUs; fit sets them from train.num_threads), whatever the machine has."""
    loaders = []

    class Counted(torch.utils.data.DataLoader):
        def __init__(self, *args, **kwargs):
            loaders.append(kwargs)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(torch.utils.data, "DataLoader", Counted)
    d = _folder(tmp_path, 1)
    for epoch in range(2):
        assert sum(len(y) for _, y in d.train_batches(3, epoch=epoch)) == 8
        assert sum(len(y) for _, y in d.eval_batches(3)) == 4
    assert [(k["num_workers"], k.get("persistent_workers")) for k in loaders] == [(1, True)]
    # data.num_workers null: the run's threads, read when it trains (a trial's node), not when the driver loads
    cfg = DataConfig(name="imagenet", root=tmp_path / "tree", val_size=2)
    for c in ("a", "b"):
        (tmp_path / "tree" / "train" / c).mkdir(parents=True)
        for i in range(2):
            (tmp_path / "tree" / "train" / c / f"{i}.png").write_bytes((tmp_path / "0.png").read_bytes())
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)                        # a trial with resources.cpu: 1 on this 2-core machine
        assert load_data(cfg).num_workers is None and load_data(cfg).workers() == 1
        torch.set_num_threads(16)
        assert load_data(cfg).workers() == 8           # at most 8
    finally:
        torch.set_num_threads(before)


def test_folder_data_augments_each_image_by_seed_epoch_and_position_whatever_the_workers(tmp_path):
    """A batch is the same whether one or two workers (or none) decode it: a resumed trial on a node with other
    CPUs crops and flips as the uninterrupted one would have; another epoch draws other crops."""
    batches = {w: [x for x, _ in _folder(tmp_path, w).train_batches(4, epoch=1)] for w in (0, 1, 2)}
    assert all(torch.equal(a, b) for a, b in zip(batches[0], batches[2])) and len(batches[0]) == 2
    assert all(torch.equal(a, b) for a, b in zip(batches[0], batches[1]))
    again = [x for x, _ in _folder(tmp_path, 0).train_batches(4, epoch=1)]
    other = [x for x, _ in _folder(tmp_path, 0).train_batches(4, epoch=2)]
    assert all(torch.equal(a, b) for a, b in zip(batches[0], again))
    assert not torch.equal(torch.cat(batches[0]).sum(0), torch.cat(other).sum(0))   # same images, other crops
    torch.manual_seed(5)
    state = torch.get_rng_state()
    list(_folder(tmp_path, 0).train_batches(4, epoch=1))    # no workers: decoded in this process ...
    assert torch.equal(torch.get_rng_state(), state)        # ... without a draw from its stream (dropout's)


def test_a_trial_on_a_node_without_the_folder_dataset_fails_naming_the_node_and_the_path(tmp_path):
    """File lists travel to the workers, files don't: a node that lacks them says which, before training."""
    import pickle as pk

    from PIL import Image

    from dsearch.search.trainable import NODE, NODE_IP, check_data_here

    for c in ("a", "b"):
        (tmp_path / "train" / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(images(1, 3, 8, seed=i)[0].transpose(1, 2, 0)).save(tmp_path / "train" / c / f"{i}.png")
    d = load_data(DataConfig(name="imagenet", root=tmp_path, val_size=2, num_workers=0))
    node = {NODE: "worker-7", NODE_IP: "10.0.0.7"}
    check_data_here(pk.loads(pk.dumps(d)), node)                # all there: no error
    check_data_here(load_data(DataConfig(name="synthetic", train_subset=10, val_size=10)), node)  # in memory
    (tmp_path / "train").rename(tmp_path / "moved")            # the folder is not at this path here
    with pytest.raises(FileNotFoundError) as e:
        check_data_here(d, node)
    assert str(e.value).startswith(f"node worker-7 (10.0.0.7) has no folder {tmp_path / 'train'}: ")
    assert "same path on every node" in str(e.value)
    (tmp_path / "moved").rename(tmp_path / "train")
    first = Path(d.train_samples[0][0])
    first.unlink()                                              # the folder is, its files are not
    with pytest.raises(FileNotFoundError, match=f"has no file {first}"):
        check_data_here(d, node)


def test_synthetic_is_seeded():
    a = load_data(DataConfig(name="synthetic", synthetic_size=100, val_size=50))
    b = load_data(DataConfig(name="synthetic", synthetic_size=100, val_size=50))
    assert torch.equal(a.train_x, b.train_x) and (a.num_train, a.num_eval) == (100, 50)
    assert a.train_x.shape[1:] == (3, 16, 16)


# ------------------------------------------------------------------ missing data

def test_missing_data_is_one_line_naming_files_places_and_remedies(tmp_path, monkeypatch):
    monkeypatch.setenv("DSEARCH_DATA", str(tmp_path / "env"))
    monkeypatch.setattr(D, "SYSTEM_DIRS", {"fashion_mnist": ("/nonexistent/fashion-mnist",)})
    with pytest.raises(D.MissingDataError) as e:
        load_data(DataConfig(name="fashion_mnist", root=tmp_path / "mine"))
    msg = str(e.value)
    assert "\n" not in msg and isinstance(e.value, UserError)
    for part in ("train-images-idx3-ubyte[.gz]", "train-labels-idx1-ubyte[.gz]", str(tmp_path / "mine"),
                 str(tmp_path / "mine" / "FashionMNIST" / "raw"), str(tmp_path / "env"),
                 "/nonexistent/fashion-mnist", "apt install dataset-fashion-mnist", "--download"):
        assert part in msg


def test_missing_cifar_names_the_expected_layout(tmp_path):
    with pytest.raises(D.MissingDataError, match=r"data_batch_1.*cifar-10-batches-py.*--download"):
        load_data(DataConfig(name="cifar10", root=tmp_path))


def test_final_needs_the_test_files(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte.gz").unlink()
    assert load_data(DataConfig(name="mnist", root=tmp_path, val_size=10)).num_train == 90
    with pytest.raises(D.MissingDataError, match="t10k-images-idx3-ubyte"):
        load_data(DataConfig(name="mnist", root=tmp_path, val_size=10), final=True)


# ------------------------------------------------------------------ splits

def test_stratified_split_keeps_class_proportions_with_largest_remainder():
    y = torch.tensor([0] * 600 + [1] * 300 + [2] * 100)
    take, rest = stratified_split(y, 100, torch.Generator().manual_seed(0))
    assert torch.bincount(y[take]).tolist() == [60, 30, 10]
    assert len(rest) == 900 and len(set(take.tolist()) | set(rest.tolist())) == 1000
    take2, _ = stratified_split(y, 7, torch.Generator().manual_seed(0))   # 4.2, 2.1, 0.7 → 4, 2, 1
    assert torch.bincount(y[take2]).tolist() == [4, 2, 1]


def test_paper_validation_sizes():
    assert DataConfig(name="cifar10").resolved_val_size == 5000
    assert DataConfig(name="cifar100").resolved_val_size == 5000
    assert DataConfig(name="svhn").resolved_val_size == 6000
    assert DataConfig(name="fashion_mnist").resolved_val_size == 5000
    assert DataConfig(name="mnist").resolved_val_size == 5000


@needs_fashion
def test_real_fashion_mnist_55000_train_5000_val_500_per_class_and_subset_leaves_val_alone(monkeypatch):
    monkeypatch.setattr(D, "SYSTEM_DIRS", {"fashion_mnist": (str(FASHION),)})
    d = load_data(DataConfig(name="fashion_mnist"))
    assert (d.num_train, d.num_eval) == (55000, 5000)
    assert torch.bincount(d.eval_y).tolist() == [500] * 10
    s = load_data(DataConfig(name="fashion_mnist", train_subset=1000))
    assert s.num_train == 1000 and torch.bincount(s.train_y).tolist() == [100] * 10
    assert torch.equal(s.eval_x, d.eval_x)
    f = load_data(DataConfig(name="fashion_mnist"), final=True)
    assert (f.num_train, f.num_eval) == (60000, 10000)
    assert f.mean[0] == pytest.approx(0.2860, abs=1e-4)            # the well-known Fashion-MNIST mean


def test_train_subset_larger_than_the_split_is_an_error(tmp_path):
    write_mnist(tmp_path)
    with pytest.raises(UserError, match="train_subset: 95 is more than the 90"):
        load_data(DataConfig(name="mnist", root=tmp_path, val_size=10, train_subset=95))


# ------------------------------------------------------------------ augmentation and normalisation

def test_crop_offsets_4_4_without_flip_is_the_identity_and_0_0_shifts_in_zeros():
    x = torch.randint(1, 256, (2, 3, 8, 8), dtype=torch.uint8)
    same = augment(x, torch.tensor([[4, 4], [4, 4]]), None)
    assert same.shape == x.shape and same.dtype == torch.uint8 and torch.equal(same, x)
    shifted = augment(x, torch.tensor([[0, 0], [8, 8]]), None)
    assert torch.equal(shifted[0, :, 4:, 4:], x[0, :, :4, :4]) and shifted[0, :, :4].eq(0).all()
    assert torch.equal(shifted[1, :, :4, :4], x[1, :, 4:, 4:]) and shifted[1, :, 4:].eq(0).all()
    flipped = augment(x, torch.tensor([[4, 4], [4, 4]]), torch.tensor([True, False]))
    assert torch.equal(flipped[0], x[0].flip(-1)) and torch.equal(flipped[1], x[1])


def test_two_images_of_one_batch_get_different_crop_offsets():
    d = white_data()
    (x, _), = list(d.train_batches(64, epoch=0, seed=0))
    assert x.shape == (64, 3, 12, 12)
    padding = x[:, 0] < 0                                          # normalised zero padding is negative
    assert len({tuple(p.flatten().tolist()) for p in padding}) > 20   # 81 possible offsets
    (x2, _), = list(d.train_batches(64, epoch=1, seed=0))
    assert not torch.equal(x, x2)                                  # a new draw every epoch
    (x3, _), = list(d.train_batches(64, epoch=0, seed=0))
    assert torch.equal(x, x3)                                      # a function of (seed, epoch)


def test_normalisation_uses_the_training_split_channel_stats():
    x = torch.stack([torch.full((2, 4, 4), 0, dtype=torch.uint8), torch.full((2, 4, 4), 255, dtype=torch.uint8)])
    x[:, 1] = 51
    mean, std = channel_stats(x)
    assert mean == pytest.approx((0.5, 0.2)) and std[0] == pytest.approx(0.5)
    d = load_data(DataConfig(name="synthetic", synthetic_size=300, val_size=50))
    assert (d.mean, d.std) == channel_stats(d.train_x)
    # float32 normalisation: values lie within ±3 here, so each is off by ≲ 3·2⁻²³ ≈ 4e-7, and so are the
    # channel mean and (population) std over 300·16·16 pixels; 1e-5 leaves a 20× margin.
    t = d.normalize(d.train_x)
    assert t.mean((0, 2, 3)).abs().max() < 1e-5
    assert (t.std((0, 2, 3), correction=0) - 1).abs().max() < 1e-5
    # The eval split is shifted and scaled by the train split's numbers, not its own: pixel for pixel
    # the same formula, so its channel mean is (eval mean − train mean) / train std, ≈ 2e-3…5e-3 here,
    # which the 1e-5 tolerance tells apart from the 0 that the eval split's own stats would give.
    z = torch.cat([xb for xb, _ in d.eval_batches(1000)])
    m, s = (torch.tensor(v, dtype=torch.float64).view(1, -1, 1, 1) for v in (d.mean, d.std))
    expected = (d.eval_x.double() / 255 - m) / s
    assert z.shape == d.eval_x.shape and (z.double() - expected).abs().max() < 1e-5
    eval_mean, _ = channel_stats(d.eval_x)
    torch.testing.assert_close(z.double().mean((0, 2, 3)), (torch.tensor(eval_mean, dtype=torch.float64) - m.flatten()) / s.flatten(),
                               rtol=0, atol=1e-5)


def ramp_data(n, side=12, flip=True):
    """n identical images whose pixel value rises left to right (10, 20, …); normalised x is uint8 / 255."""
    x = (10 * torch.arange(1, side + 1, dtype=torch.uint8)).expand(n, 3, side, side).contiguous()
    y = torch.zeros(n, dtype=torch.long)
    return Data("ramp", x, y, x, y, 10, (0.0,) * 3, (1.0,) * 3, flip=flip, augment=True)


def test_train_batches_flip_about_half_the_images_and_only_where_flippable():
    n = 2000
    d = ramp_data(n)
    x = torch.cat([xb for xb, _ in d.train_batches(256, epoch=0, seed=0)])
    pixels = (x * 255).round()
    # Row 6 of 12 stays inside the image for every vertical shift of ±4, and a horizontal shift of
    # ±4 keeps ≥ 8 of its 12 ramp pixels: non-zero pixels read rising (unflipped) or falling (flipped).
    row = pixels[:, 0, 6]
    visible = row > 0
    assert visible.sum(1).min() >= 8
    firsts = row.gather(1, visible.int().argmax(1, keepdim=True)).squeeze(1)
    lasts = row.gather(1, (visible.int() * torch.arange(12)).argmax(1, keepdim=True)).squeeze(1)
    flipped = firsts > lasts
    # Each image flips with probability 1/2, independently: the count is Binomial(n, 1/2), whose
    # fraction has σ = sqrt(0.25 / n) ≈ 0.011; 4σ is exceeded with probability ≈ 6e-5.
    sigma = (0.25 / n) ** 0.5
    assert abs(flipped.float().mean().item() - 0.5) < 4 * sigma
    # Nothing but flips and shifts: every visible run is the ramp in one direction, in steps of 10.
    steps = row[:, 1:] - row[:, :-1]
    both = visible[:, 1:] & visible[:, :-1]
    assert torch.where(both, steps.abs(), 10).eq(10).all()
    unflippable = ramp_data(n, flip=False)
    x = torch.cat([xb for xb, _ in unflippable.train_batches(256, epoch=0, seed=0)])
    row = (x * 255).round()[:, 0, 6]
    assert torch.where(row[:, 1:] > 0, row[:, 1:] - row[:, :-1], 10).ge(0).all()   # svhn, mnist: never


def test_a_flipped_crop_is_the_mirror_image_of_the_unflipped_crop_at_the_same_offset():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8, generator=g)
    flips = torch.rand(64, generator=g) < 0.5                     # as Data.train_batches draws them
    centred = torch.full((64, 2), PAD)                              # offset (PAD, PAD): no shift
    out = augment(x, centred, flips)
    assert torch.equal(out[flips], torch.flip(x[flips], dims=[-1])) and torch.equal(out[~flips], x[~flips])
    offsets = torch.randint(0, 2 * PAD + 1, (64, 2), generator=g)
    out = augment(x, offsets, flips)
    unflipped = augment(x, offsets, None)
    assert torch.equal(out[flips], torch.flip(unflipped[flips], dims=[-1]))
    assert torch.equal(out[~flips], unflipped[~flips])
    assert 0 < int(flips.sum()) < 64                               # both kinds occur (2⁻⁶³ to fail)


def test_eval_batches_are_unaugmented_and_in_order():
    d = white_data(10)
    xs = torch.cat([x for x, _ in d.eval_batches(4)])
    assert torch.equal(xs, d.normalize(d.eval_x)) and xs.eq(2.0).all()   # (1 - 0.5) / 0.25


def test_data_pickles_to_about_its_tensor_bytes():
    d = load_data(DataConfig(name="synthetic", synthetic_size=1000, val_size=200))
    blob = pickle.dumps(d)
    tensors = d.train_x.numel() + d.eval_x.numel() + 8 * (d.num_train + d.num_eval)
    assert len(blob) < 1.1 * tensors + 10_000
    back = pickle.loads(blob)
    assert torch.equal(back.train_x, d.train_x) and back.device == torch.device("cpu")


def test_run_config_takes_in_channels_and_classes_from_the_dataset():
    run = RunConfig(model=dict(variant="densenet-bc", depth=100, growth_rate=12), data=dict(name="fashion_mnist"),
                    train=TrainConfig())
    assert (run.model.in_channels, run.model.num_classes) == (1, 10)


def test_download_uses_torchvisions_downloader_into_data_dir_then_reads_its_layout(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    calls = []

    class FakeMNIST:                                               # no network in tests
        def __init__(self, root, train, download):
            calls.append((root, train, download))
            write_mnist(Path(root) / "MNIST" / "raw")

    monkeypatch.setattr(tvd, "MNIST", FakeMNIST)
    d = load_data(DataConfig(name="mnist", root=tmp_path / "dl", val_size=10, download=True))
    assert d.num_train == 90 and calls == [(str(tmp_path / "dl"), True, True), (str(tmp_path / "dl"), False, True)]
