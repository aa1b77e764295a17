"""Sample-quality metrics (STUDY.md section 6) against closed forms and direct O(n^2)
computations; the digits feature classifier, its disk cache and its Frechet distance; noise
floors; one-line refusals of bad input."""

import math

import numpy as np
import ot
import pytest
import scipy.linalg
import scipy.stats
import torch

from fmstudy import feature_classifier as FC
from fmstudy import frechet as FR
from fmstudy import metrics as M
from fmstudy.data import get_benchmark


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tests use small sets, which threads do not speed up; on a busy 2-core machine
    torch's threads made this file 10x slower (spin-waits of descheduled threads). The
    caller's thread count is restored after the module."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def gauss(n: int, mean, scale, seed: int) -> torch.Tensor:
    mean = torch.as_tensor(mean, dtype=torch.float64)
    return mean + scale * torch.randn(n, len(mean), generator=gen(seed), dtype=torch.float64)


# -- exact W2 -------------------------------------------------------------------------------
def test_w2_between_gaussians_matches_closed_form():
    # W2(N(m1, s1^2 I), N(m2, s2^2 I)) = sqrt(||m1 - m2||^2 + d (s1 - s2)^2) = sqrt(8 + 2)
    m1, m2, s1, s2 = [0.0, 0.0], [2.0, -2.0], 1.0, 2.0
    x, y = gauss(1500, m1, s1, 1), gauss(1500, m2, s2, 2)
    closed = math.sqrt(8.0 + 2 * (s1 - s2) ** 2)
    assert abs(M.wasserstein2(x, y) - closed) < 0.15
    assert M.wasserstein2(x, x.clone()) == 0.0


def test_w2_in_1d_is_the_sorted_matching():
    x, y = gauss(40, [0.0], 1.0, 3), gauss(40, [0.7], 1.5, 4)
    sorted_match = torch.sqrt(((x.sort(0).values - y.sort(0).values) ** 2).mean()).item()
    assert M.wasserstein2(x, y) == pytest.approx(sorted_match, rel=1e-12, abs=1e-14)


def test_w2_accepts_unequal_sizes_and_refuses_huge_problems():
    x, y = gauss(30, [0.0, 0.0], 1.0, 5), gauss(45, [1.0, 0.0], 1.0, 6)
    a, b = np.full(30, 1 / 30), np.full(45, 1 / 45)
    cost = ((x[:, None, :] - y[None]) ** 2).sum(-1).numpy()
    assert M.wasserstein2(x, y) == pytest.approx(math.sqrt(ot.emd2(a, b, cost)), rel=1e-10)
    with pytest.raises(ValueError, match=r"n \* m = 5001 \* 5000 = 25005000 is not allowed") as err:
        M.wasserstein2(torch.zeros(5001, 1), torch.zeros(5000, 1))
    assert "\n" not in str(err.value)


# -- sliced Wasserstein ---------------------------------------------------------------------
def test_sliced_wasserstein_in_1d_equals_exact_w_p_for_unequal_sizes():
    # In d = 1 every direction is +-1, so SW_p = W_p: this checks the common quantile grid.
    x, y = gauss(37, [0.0], 1.0, 7), gauss(53, [0.5], 2.0, 8)
    assert M.sliced_wasserstein(x, y, n_projections=8) == pytest.approx(M.wasserstein2(x, y), rel=1e-10)
    w1 = scipy.stats.wasserstein_distance(x[:, 0].numpy(), y[:, 0].numpy())
    assert M.sliced_wasserstein(x, y, n_projections=8, p=1) == pytest.approx(w1, rel=1e-10)


def test_sliced_wasserstein_is_deterministic_and_uses_only_the_generator():
    x, y = gauss(200, [0.0] * 3, 1.0, 9), gauss(150, [1.0, 0.0, 0.0], 1.0, 10)
    state = torch.random.get_rng_state()
    assert M.sliced_wasserstein(x, y) == M.sliced_wasserstein(x, y)
    assert M.sliced_wasserstein(x, y, generator=gen(5)) == M.sliced_wasserstein(x, y, generator=gen(5))
    assert M.sliced_wasserstein(x, y, generator=gen(5)) != M.sliced_wasserstein(x, y, generator=gen(6))
    assert torch.equal(state, torch.random.get_rng_state())


def test_sliced_wasserstein_invariances():
    x = gauss(800, [0.0, 0.0, 0.0], 1.0, 11) * torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    y = gauss(600, [1.0, -1.0, 0.5], 1.0, 12)
    base = M.sliced_wasserstein(x, y, n_projections=4096)
    shift = torch.tensor([3.0, -7.0, 11.0], dtype=torch.float64)
    # Translation: the same directions see the same projected differences, so only rounding.
    assert M.sliced_wasserstein(x + shift, y + shift, n_projections=4096) == pytest.approx(base, rel=1e-10)
    # Rotation: the directions change, but their law does not (Monte-Carlo noise of ~1%).
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=gen(13), dtype=torch.float64))
    assert M.sliced_wasserstein(x @ q.T, y @ q.T, n_projections=4096) == pytest.approx(base, rel=0.05)


def test_sliced_wasserstein_of_a_mean_shift_is_norm_over_dimension():
    # Same shape, mean shift a: W2^2 along theta is (theta . a)^2, and E (theta . a)^2 = ||a||^2 / d.
    a = torch.tensor([1.5, -1.0, 0.5, 2.0], dtype=torch.float64)
    x, y = gauss(5000, [0.0] * 4, 1.0, 14), gauss(5000, a, 1.0, 15)
    sw = M.sliced_wasserstein(x, y, n_projections=4096)
    assert sw**2 == pytest.approx(float(a @ a) / 4, rel=0.07)


# -- MMD and energy distance ----------------------------------------------------------------
def _rbf_mmd_numpy(x, y, hs, unbiased):
    x, y = np.asarray(x, float), np.asarray(y, float)

    def k(a, b):
        d2 = ((a[:, None, :] - b[None]) ** 2).sum(-1)
        return sum(np.exp(-d2 / (2 * h * h)) for h in hs)

    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    n, m = len(x), len(y)
    if unbiased:
        return (kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.mean()
    return kxx.mean() + kyy.mean() - 2 * kxy.mean()


@pytest.mark.parametrize("unbiased", [False, True])
def test_mmd_matches_direct_kernel_sums(unbiased):
    x, y = gauss(70, [0.0] * 3, 1.0, 16), gauss(50, [0.5, 0.0, 0.0], 1.3, 17)
    hs = (0.3, 0.6, 1.2, 5.0)  # 0.3 -> 0.6 -> 1.2 exercises the squaring shortcut, 5.0 a fresh exp
    per = M.mmd_per_bandwidth(x, y, hs, unbiased=unbiased)
    assert list(per) == list(hs)
    for h in hs:
        assert per[h] == pytest.approx(_rbf_mmd_numpy(x, y, [h], unbiased), rel=1e-9, abs=1e-14)
    assert M.mmd(x, y, hs, unbiased=unbiased) == pytest.approx(_rbf_mmd_numpy(x, y, hs, unbiased), rel=1e-9)
    assert M.mmd(x, y, 0.6, unbiased=unbiased) == pytest.approx(per[0.6], rel=1e-12)  # one number is one kernel


def test_mmd_default_bandwidths_are_scaled_pooled_median_distance():
    x, y = gauss(120, [0.0, 0.0], 1.0, 18), gauss(90, [2.0, 0.0], 1.0, 19)
    med = np.median(scipy.spatial.distance.pdist(torch.cat([x, y]).numpy()))
    assert M.median_bandwidths(x, y) == pytest.approx(tuple(med * s for s in (0.25, 0.5, 1, 2, 4)), rel=1e-12)
    assert M.mmd(x, y) == pytest.approx(_rbf_mmd_numpy(x, y, M.median_bandwidths(x, y), False), rel=1e-9)


def test_energy_distance_matches_direct_computation():
    for d, seed in ((1, 20), (5, 21)):
        x, y = gauss(60, [0.0] * d, 1.0, seed), gauss(45, [0.3] * d, 2.0, seed + 100)
        xn, yn = x.numpy(), y.numpy()

        def mean_dist(a, b):
            return np.sqrt(((a[:, None, :] - b[None]) ** 2).sum(-1)).mean()

        direct = 2 * mean_dist(xn, yn) - mean_dist(xn, xn) - mean_dist(yn, yn)
        assert M.energy_distance(x, y) == pytest.approx(direct, rel=1e-10)


def test_mmd_and_energy_are_zero_on_a_set_itself_and_grow_with_a_mean_shift():
    x = gauss(300, [0.0] * 3, 1.0, 22)
    assert abs(M.mmd(x, x.clone())) < 1e-12 and abs(M.energy_distance(x, x.clone())) < 1e-12
    y0 = gauss(300, [0.0] * 3, 1.0, 23)
    e1 = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    for metric in (M.mmd, M.energy_distance, lambda a, b: M.mmd(a, b, (1.0,))):
        vals = [metric(x, y0 + s * e1) for s in (0.0, 0.5, 1.0, 2.0)]
        assert all(v >= 0 for v in vals) and vals == sorted(vals) and vals[-1] > 10 * vals[0]


def test_pairwise_metrics_are_exact_with_duplicated_rows():
    # A finite pool drawn with replacement repeats rows; those pairs must give distance 0.
    pool = gauss(20, [5.0] * 4, 1.0, 24)
    x, y = pool[torch.arange(60) % 20], pool[torch.arange(45) % 15]
    xn, yn = x.numpy(), y.numpy()

    def mean_dist(a, b):
        return np.sqrt(((a[:, None, :] - b[None]) ** 2).sum(-1)).mean()

    direct = 2 * mean_dist(xn, yn) - mean_dist(xn, xn) - mean_dist(yn, yn)
    assert M.energy_distance(x, y) == pytest.approx(direct, rel=1e-10)


# -- Frechet distance -----------------------------------------------------------------------
def _frechet_scipy(mu1, s1, mu2, s2):
    root = scipy.linalg.sqrtm(s1)
    cross = scipy.linalg.sqrtm(root @ s2 @ root).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(cross))


def test_gaussian_frechet_matches_closed_forms():
    rng = np.random.default_rng(0)
    k = 6
    a, b = rng.normal(size=(k, k)), rng.normal(size=(k, k))
    s1, s2 = a @ a.T + 0.1 * np.eye(k), b @ b.T + 0.1 * np.eye(k)
    mu1, mu2 = rng.normal(size=k), rng.normal(size=k)
    fd = FR.gaussian_frechet(torch.tensor(mu1), torch.tensor(s1), torch.tensor(mu2), torch.tensor(s2))
    assert fd == pytest.approx(_frechet_scipy(mu1, s1, mu2, s2), rel=1e-9)
    # Commuting (diagonal) covariances: sum_i (sqrt(a_i) - sqrt(b_i))^2 + ||mu1 - mu2||^2.
    da, db = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    expected = 1.0 + ((np.sqrt(da) - np.sqrt(db)) ** 2).sum()
    fd = FR.gaussian_frechet(torch.zeros(3), torch.diag(torch.tensor(da)), torch.tensor([1.0, 0, 0]), torch.diag(torch.tensor(db)))
    assert fd == pytest.approx(expected, rel=1e-12)


def test_frechet_distance_uses_sample_mean_and_covariance():
    rng = np.random.default_rng(1)
    fx = rng.normal(size=(500, 8)) @ rng.normal(size=(8, 8))
    fy = rng.normal(size=(300, 8)) * 2 + 0.5
    expected = _frechet_scipy(fx.mean(0), np.cov(fx, rowvar=False), fy.mean(0), np.cov(fy, rowvar=False))
    assert FR.frechet_distance(torch.tensor(fx), torch.tensor(fy)) == pytest.approx(expected, rel=1e-9)
    assert FR.frechet_distance(torch.tensor(fx), torch.tensor(fx)) < 1e-10 * np.trace(np.cov(fx, rowvar=False))


def test_frechet_distance_of_large_gaussian_samples_is_close_to_the_population_value():
    # N(0, I) vs N(m, 4 I) in 4-D: ||m||^2 + 4 (2 - 1)^2 = 1 + 4.
    x, y = gauss(40000, [0.0] * 4, 1.0, 25), gauss(40000, [1.0, 0.0, 0.0, 0.0], 2.0, 26)
    assert FR.frechet_distance(x, y) == pytest.approx(5.0, rel=0.03)


def test_frechet_distance_of_rank_deficient_features_is_zero_on_itself():
    f = gauss(20, [0.0] * 50, 1.0, 27)  # covariance of rank 19 in 50-D
    assert FR.frechet_distance(f, f.clone()) < 1e-10 * 50


# -- the digits classifier and its cache ----------------------------------------------------
_REAL_TRAIN = FC.train_classifier


def _quick(calls):
    """A stand-in for train_classifier that records its calls and trains one epoch only."""
    def train(benchmark, seed=0, device=None):
        calls.append(benchmark.name)
        return _REAL_TRAIN(benchmark, seed=seed, epochs=1, device=device)

    return train


@pytest.fixture(scope="module")
def digits():
    return get_benchmark("digits")


@pytest.fixture(scope="module")
def digits_classifier(digits, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return FC.classifier_for(digits, cache_dir=cache), cache


def test_digits_classifier_accuracy_and_features(digits, digits_classifier):
    model, _ = digits_classifier
    assert model.heldout_accuracy >= 0.9
    with torch.no_grad():
        pred = model(digits.heldout).argmax(1)
        assert model.features(digits.heldout).shape == (digits.heldout.shape[0], 128)
    assert float((pred == digits.heldout_labels).float().mean()) == pytest.approx(model.heldout_accuracy)


def test_classifier_frechet_separates_real_from_noise(digits, digits_classifier):
    model, _ = digits_classifier
    n = digits.heldout.shape[0]
    real = FC.classifier_frechet(digits, digits.heldout, digits.train[:n], classifier=model)
    noise = FC.classifier_frechet(digits, digits.heldout, torch.randn(n, 64, generator=gen(28)), classifier=model)
    assert 0 < real < 0.05 * noise


def test_classifier_cache_is_reused_and_a_corrupt_file_is_rebuilt(digits, digits_classifier, monkeypatch):
    model, cache = digits_classifier
    [path] = list(cache.glob("classifier-digits-*.pt"))

    def no_training(*args, **kwargs):
        raise AssertionError("the cached classifier should have been loaded")

    monkeypatch.setattr(FC, "train_classifier", no_training)
    again = FC.classifier_for(digits, cache_dir=cache)
    for (k, v), (k2, v2) in zip(model.state_dict().items(), again.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    assert again.heldout_accuracy == model.heldout_accuracy

    calls = []
    monkeypatch.setattr(FC, "train_classifier", _quick(calls))
    path.write_bytes(b"not a torch file")
    rebuilt = FC.classifier_for(digits, cache_dir=cache)
    assert calls == ["digits"] and isinstance(rebuilt, FC.FeatureClassifier)
    monkeypatch.setattr(FC, "train_classifier", no_training)
    FC.classifier_for(digits, cache_dir=cache)  # the rebuilt file loads
    assert [p.name for p in cache.iterdir()] == [path.name]  # no temporary files left behind


def test_classifier_cache_location_and_key(digits, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(FC, "train_classifier", _quick(calls))
    monkeypatch.setenv("FMSTUDY_CACHE", str(tmp_path / "env"))
    FC.classifier_for(digits)
    assert len(list((tmp_path / "env").glob("classifier-digits-*.pt"))) == 1
    FC.classifier_for(get_benchmark("digits", n_heldout=300))  # other options: another file
    FC.classifier_for(digits, seed=1)  # another seed: another file
    assert len(list((tmp_path / "env").glob("classifier-digits-*.pt"))) == 3 and len(calls) == 3


def test_an_unwritable_cache_warns_and_still_returns_a_classifier(digits, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(FC, "train_classifier", _quick(calls))
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    with pytest.warns(UserWarning, match="could not cache the classifier"):
        model = FC.classifier_for(digits, cache_dir=blocker / "cache")
    assert isinstance(model, FC.FeatureClassifier) and calls == ["digits"]

def test_training_is_seeded_and_leaves_the_global_rng_alone(digits):
    torch.set_num_threads(2)  # training runs on one thread and must restore the caller's count
    state = torch.random.get_rng_state()
    a, acc_a = FC.train_classifier(digits, seed=3, epochs=1)
    b, acc_b = FC.train_classifier(digits, seed=3, epochs=1)
    c, _ = FC.train_classifier(digits, seed=4, epochs=1)
    assert acc_a == acc_b and all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    assert not torch.equal(a.layers[0].weight, c.layers[0].weight)
    assert torch.equal(state, torch.random.get_rng_state()) and torch.get_num_threads() == 2
    torch.set_num_threads(1)


# -- noise floor ----------------------------------------------------------------------------
def test_noise_floor_is_finite_and_reproducible():
    def sample(n, g):
        return torch.randn(n, 2, generator=g)

    for metric in (M.mmd, M.energy_distance, M.sliced_wasserstein):
        mean, std = M.noise_floor(metric, sample, 200, repeats=4, generator=gen(29))
        assert math.isfinite(mean) and math.isfinite(std) and mean > 0 and std >= 0
        assert (mean, std) == M.noise_floor(metric, sample, 200, repeats=4, generator=gen(29))
    # The floor shrinks with n (here energy distance, whose floor scales like 1/n).
    small, _ = M.noise_floor(M.energy_distance, sample, 100, generator=gen(30))
    large, _ = M.noise_floor(M.energy_distance, sample, 800, generator=gen(30))
    assert large < small / 3


# -- bad input ------------------------------------------------------------------------------
GOOD = torch.zeros(5, 3)
PAIR_METRICS = [M.sliced_wasserstein, M.mmd, M.energy_distance, M.wasserstein2, FR.frechet_distance]


@pytest.mark.parametrize("metric", PAIR_METRICS, ids=lambda f: f.__name__)
@pytest.mark.parametrize(
    "x, y, message",
    [
        (torch.zeros(5), GOOD, r"x has shape \[5\]: expected \[n, d\]"),
        (GOOD, torch.zeros(0, 3), r"y has shape \[0, 3\]: expected \[n, d\] with n >= "),
        (GOOD, torch.zeros(5, 4), r"x is \[n, 3\] but y is \[m, 4\]: both sets need the same dimension d"),
        (torch.tensor([[0.0, float("nan"), 1.0]] * 5), GOOD, r"x has 5 non-finite values \(first nan at \[0, 1\]\)"),
        (GOOD, torch.tensor([[0.0, 1.0, float("inf")]] * 5), r"y has 5 non-finite values \(first inf at \[0, 2\]\)"),
        ([[0.0, 1.0, 2.0]], GOOD, r"x is a list: expected a torch.Tensor or numpy array"),
    ],
)
def test_bad_point_sets_are_refused_in_one_line(metric, x, y, message):
    with pytest.raises(ValueError, match=message) as err:
        metric(x, y)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: M.sliced_wasserstein(GOOD, GOOD, n_projections=0), "n_projections=0 is not allowed"),
        (lambda: M.sliced_wasserstein(GOOD, GOOD, p=0.5), "p=0.5 is not allowed"),
        (lambda: M.mmd(GOOD, GOOD, bandwidths=(1.0, -1.0)), r"bandwidths=\(1.0, -1.0\) are not allowed"),
        (lambda: M.mmd(GOOD, GOOD, bandwidths=(1.0, 1.0)), r"bandwidths=\(1.0, 1.0\) are not allowed: give one or more distinct"),
        (lambda: M.mmd(GOOD, GOOD, bandwidths=()), r"bandwidths=\(\) are not allowed"),
        (lambda: M.mmd(GOOD[:1], GOOD, unbiased=True), r"x has shape \[1, 3\]: expected \[n, d\] with n >= 2"),
        (lambda: FR.frechet_distance(GOOD[:1], GOOD), r"x has shape \[1, 3\]: expected \[n, d\] with n >= 2"),
        (lambda: FR.gaussian_frechet(torch.zeros(3), torch.eye(3), torch.zeros(2), torch.eye(2)), "shapes mu_x"),
        (lambda: M.noise_floor(M.mmd, lambda n, g: GOOD, 5, repeats=1, generator=gen(0)), "repeats=1 is not allowed"),
        (lambda: M.noise_floor(M.mmd, lambda n, g: GOOD, 5, generator=None), "generator=None is not allowed"),
        (lambda: FC.classifier_for(get_benchmark("gmm8", n_heldout=10)), "benchmark 'gmm8' has no labels"),
        (lambda: FC.classifier_frechet(get_benchmark("digits"), torch.zeros(5, 3), torch.zeros(5, 3), classifier=object()),
         r"x is \[n, 3\]: benchmark 'digits' needs \[n, 64\]"),
    ],
)
def test_bad_arguments_are_refused_in_one_line(call, message):
    with pytest.raises(ValueError, match=message) as err:
        call()
    assert "\n" not in str(err.value)

