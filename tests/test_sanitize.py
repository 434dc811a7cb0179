"""Sanitisers: transforms stay in bounds, validation rejects or clamps, recipes load or fail clearly."""

from __future__ import annotations

import math

import pytest
import torch

from bastion.catalog import resolve
from bastion.defenses.sanitizer import SanitizedModel, Sanitizer, load_sanitizer, sanitizer_from_dict
from bastion.defenses.transforms import JPEG, BitDepth, GaussianNoise, MedianSmooth, apply_for_attack
from bastion.defenses.validation import InputValidator
from bastion.errors import ConfigError, DataError

BOUNDS = [(0.0, 1.0), (-1.0, 2.0)]


def images(bounds, n=4, seed=0):
    lo, hi = bounds
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, 1, 12, 12), generator=g) * (hi - lo) + lo


@pytest.mark.parametrize("bounds", BOUNDS)
@pytest.mark.parametrize("bits", [1, 3, 8])
def test_bit_depth_in_bounds_on_grid_and_idempotent(bounds, bits):
    x = images(bounds)
    out = BitDepth(bits).apply(x, bounds)
    lo, hi = bounds
    assert out.min() >= lo and out.max() <= hi
    levels = (out - lo) / (hi - lo) * (2 ** bits - 1)
    assert torch.allclose(levels, levels.round(), atol=1e-4)
    assert len(torch.unique(out)) <= 2 ** bits
    assert torch.allclose(BitDepth(bits).apply(out, bounds), out, atol=1e-6)


@pytest.mark.parametrize("bounds", BOUNDS)
@pytest.mark.parametrize("size", [2, 3])
def test_median_stays_in_bounds_and_picks_window_values(bounds, size):
    x = images(bounds)
    out = MedianSmooth(size).apply(x, bounds)
    assert out.shape == x.shape
    assert out.min() >= x.min() and out.max() <= x.max()
    # Every output value is one of the input values of its image (a median selects, never invents).
    for image_in, image_out in zip(x, out):
        assert torch.isin(image_out, image_in).all()
    # Constant regions are fixed points; a single-pixel spike is removed.
    flat = torch.full((1, 1, 8, 8), 0.5 * (bounds[0] + bounds[1]))
    assert torch.equal(MedianSmooth(size).apply(flat, bounds), flat)
    spike = flat.clone()
    spike[0, 0, 4, 4] = bounds[1]
    assert torch.equal(MedianSmooth(3).apply(spike, bounds), flat)


def test_median_is_not_idempotent_in_general_but_stays_bounded():
    x = images((0.0, 1.0), n=8)
    once = MedianSmooth(3).apply(x, (0.0, 1.0))
    twice = MedianSmooth(3).apply(once, (0.0, 1.0))
    assert not torch.equal(once, twice)  # a median filter keeps smoothing random images
    assert twice.min() >= once.min() and twice.max() <= once.max()


@pytest.mark.parametrize("bounds", BOUNDS)
def test_jpeg_in_bounds_8bit_and_nearly_idempotent(bounds):
    x = images(bounds)
    out = JPEG(75).apply(x, bounds)
    lo, hi = bounds
    assert out.shape == x.shape and out.min() >= lo and out.max() <= hi
    pixels = (out - lo) / (hi - lo) * 255
    assert torch.allclose(pixels, pixels.round(), atol=1e-3)
    again = JPEG(75).apply(out, bounds)
    assert (again - out).abs().mean() < 0.5 * (out - x).abs().mean()  # re-encoding changes much less
    rgb = JPEG(90).apply(torch.rand(2, 3, 16, 16), (0.0, 1.0))
    assert rgb.shape == (2, 3, 16, 16)


def test_gaussian_noise_bounded_random_and_reproducible():
    x = images((0.0, 1.0))
    noise = GaussianNoise(0.3)
    a = noise.apply(x, (0.0, 1.0), torch.Generator().manual_seed(1))
    b = noise.apply(x, (0.0, 1.0), torch.Generator().manual_seed(1))
    c = noise.apply(x, (0.0, 1.0), torch.Generator().manual_seed(2))
    assert a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_transforms_declare_gradient_and_randomness():
    assert (BitDepth.differentiable, JPEG.differentiable, MedianSmooth.differentiable) == (False, False, True)
    assert GaussianNoise.randomized and not any(t.randomized for t in (BitDepth, JPEG, MedianSmooth))


def test_bpda_gives_identity_gradient_where_autograd_gives_none():
    x = torch.rand(2, 1, 6, 6, requires_grad=True)
    out = apply_for_attack(BitDepth(2), x, (0.0, 1.0))
    assert torch.equal(out.detach(), BitDepth(2).apply(x.detach(), (0.0, 1.0)))
    (grad,) = torch.autograd.grad(out.sum(), x)
    assert torch.equal(grad, torch.ones_like(x))
    jpeg_out = apply_for_attack(JPEG(50), x, (0.0, 1.0))
    (grad,) = torch.autograd.grad((jpeg_out * 3).sum(), x)
    assert torch.equal(grad, torch.full_like(x, 3.0))


# ---- validation ------------------------------------------------------------------------

def test_validation_rejects_with_clear_messages():
    strict = InputValidator(bounds=(0.0, 1.0), input_shape=(1, 4, 4))
    good = torch.rand(2, 1, 4, 4)
    assert torch.equal(strict(good), good)
    bad = good.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(DataError, match="NaN/Inf.*nonfinite"):
        strict(bad)
    with pytest.raises(DataError, match=r"outside the bounds \[0.0, 1.0\]"):
        strict(good + 0.5)
    with pytest.raises(DataError, match=r"shape \(1, 5, 5\), expected \(1, 4, 4\)"):
        strict(torch.rand(2, 1, 5, 5))
    with pytest.raises(DataError, match="must hold floats"):
        strict((good * 255).to(torch.uint8))
    with pytest.raises(DataError, match="torch tensor"):
        strict(good.numpy())


def test_validation_clamps_when_configured():
    lenient = InputValidator(bounds=(0.0, 1.0), out_of_range="clamp", nonfinite="clamp")
    x = torch.tensor([[[[float("nan"), float("inf"), -float("inf"), 1.7, -0.2, 0.4]]]])
    assert lenient(x).flatten().tolist() == pytest.approx([0.0, 1.0, 0.0, 1.0, 0.0, 0.4])
    # Clamping keeps a gradient (straight-through), so a point on the boundary is still attackable.
    z = torch.tensor([1.5, 0.5], requires_grad=True)
    (grad,) = torch.autograd.grad(lenient(z).sum(), z)
    assert grad.tolist() == [1.0, 1.0]


# ---- recipes -------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["sanitize-bitdepth", "sanitize-median", "sanitize-jpeg", "sanitize-noise"])
def test_shipped_recipes_load_and_keep_bounds(name):
    sanitizer = load_sanitizer(name)
    x = torch.rand(3, 1, 28, 28)
    out = sanitizer(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert sanitizer_from_dict(sanitizer.to_dict(), "roundtrip").to_dict() == sanitizer.to_dict()


def test_image_transforms_reject_flat_batches():
    with pytest.raises(DataError, match=r"median need image batches shaped \(N, C, H, W\), got shape \(3, 784\)"):
        load_sanitizer("sanitize-median")(torch.rand(3, 784))
    assert Sanitizer(transforms=[BitDepth(2), GaussianNoise(0.1)])(torch.rand(3, 784)).shape == (3, 784)


def write(tmp_path, text, name="r.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, message", [
    ("[[transforms]\ntype = 1", r"r\.toml: malformed TOML"),
    ("colour = 3", r"r\.toml: unknown key\(s\) colour"),
    ("[[transforms]]\ntype = \"blur\"", r"r\.toml: transforms\[0\]\.type: unknown transform 'blur'"),
    ("[[transforms]]\ntype = \"bit-depth\"\nbits = 0", r"transforms\[0\]: bits must be an integer from 1 to 16"),
    ("[[transforms]]\ntype = \"median\"\nradius = 2", r"transforms\[0\]: unknown key\(s\) radius for median"),
    ("[validation]\nout_of_range = \"ignore\"", r"validation\.out_of_range: expected \"reject\" or \"clamp\""),
    ("[validation]\nbounds = [1, 0]", r"validation: bounds must be"),
    ("[adaptive]\neot_samples = 0", r"adaptive\.eot_samples must be an integer"),
    ("[recipe]\nmethod = \"pgd-at\"", r"training recipe.*bastion train"),
])
def test_malformed_recipes_name_file_and_key(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as info:
        load_sanitizer(path)
    assert "\n" not in str(info.value)


def test_recipe_resolution_by_name_and_missing():
    assert resolve("defenses", "sanitize-jpeg").name == "sanitize-jpeg.toml"
    with pytest.raises(ConfigError, match="no defenses file named 'nope'.*sanitize-jpeg"):
        load_sanitizer("nope")
    with pytest.raises(ConfigError, match="no such file"):
        load_sanitizer("missing/recipe.toml")


# ---- the sanitised model -------------------------------------------------------------

class Linear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(16, 3)

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_sanitized_model_forward_matches_sanitizer_and_has_gradients():
    model = Linear()
    sanitizer = Sanitizer(transforms=[BitDepth(1), MedianSmooth(2)])
    wrapped = SanitizedModel(model, sanitizer)
    x = torch.rand(5, 1, 4, 4, requires_grad=True)
    assert wrapped.eot_samples == 1
    assert torch.allclose(wrapped(x), model(sanitizer(x.detach())))
    (grad,) = torch.autograd.grad(wrapped(x)[:, 0].sum(), x)
    assert grad.abs().sum() > 0  # BPDA: a usable gradient despite the quantiser


def test_randomized_sanitizer_uses_eot_average_and_is_seeded():
    model = Linear()
    sanitizer = Sanitizer(transforms=[GaussianNoise(0.2)], eot_samples=6)
    wrapped = SanitizedModel(model, sanitizer, seed=3)
    assert wrapped.eot_samples == 6
    x = torch.rand(4, 1, 4, 4)
    out = wrapped(x)
    # The same draws, by hand: log of the mean of the 6 draws' softmax.
    generator = torch.Generator().manual_seed(3)
    draws = GaussianNoise(0.2).apply(x.repeat(6, 1, 1, 1), (0.0, 1.0), generator)
    probs = torch.softmax(model(draws), 1).view(6, 4, -1).mean(0)
    assert torch.allclose(out, probs.log(), atol=1e-5)
    assert torch.allclose(torch.logsumexp(out, 1), torch.zeros(4), atol=1e-5)
    again = SanitizedModel(model, sanitizer, seed=3)(x)
    assert torch.equal(out, again)
    assert SanitizedModel(model, sanitizer, eot_samples=1).eot_samples == 1
    assert not math.isclose(out.sum().item(), SanitizedModel(model, sanitizer, seed=4)(x).sum().item())


# ---- parameters and statistics, owned by the library ----------------------------------

@pytest.mark.parametrize("make, message", [
    (lambda: BitDepth(0), "bit-depth: bits must be an integer from 1 to 16, got 0"),
    (lambda: BitDepth(True), "bit-depth: bits must be an integer from 1 to 16, got true"),
    (lambda: MedianSmooth(size=2.0), "median: size must be an integer from 2 to 15, got 2.0"),
    (lambda: JPEG(96), "jpeg: quality must be an integer from 1 to 95, got 96"),
    (lambda: GaussianNoise(0), "gaussian-noise: sigma must be a number in (0, 10], got 0"),
    (lambda: GaussianNoise(0.1, 0.2), "gaussian-noise: takes at most 1 argument"),
    (lambda: BitDepth(bitz=2), "bit-depth has no parameter 'bitz' (it takes bits)"),
])
def test_transform_parameters_are_checked_with_bastion_errors(make, message):
    with pytest.raises(ConfigError) as info:
        make()
    assert str(info.value).startswith(message) and "\n" not in str(info.value)
    assert BitDepth(3).bits == 3 and BitDepth(bits=3).label() == "bit-depth(bits=3)"
    assert GaussianNoise(1).sigma == 1.0 and isinstance(GaussianNoise(1).sigma, float)


def test_sanitize_with_stats_counts_what_validation_fixed():
    sanitizer = Sanitizer(validator=InputValidator(out_of_range="clamp", nonfinite="clamp"), transforms=[BitDepth(1)])
    x = torch.full((3, 1, 4, 4), 0.6)
    x[0, 0, 0, 0], x[1, 0, 0, 0], x[2, 0, 1, 1] = float("nan"), 1.5, -0.5
    clean, stats = sanitizer.sanitize_with_stats(x)
    assert (stats.samples, stats.nonfinite_values_replaced, stats.out_of_range_values_clamped) == (3, 1, 2)
    assert torch.equal(clean, sanitizer(x))
    expected = (clean - x.nan_to_num(0.0, 1.0, 0.0).clamp(0, 1)).abs().mean().item()
    assert stats.mean_abs_change == pytest.approx(expected)
    assert sanitizer.adaptive_evaluation() == ["BPDA for bit-depth"]
    assert Sanitizer(transforms=[MedianSmooth(2)]).adaptive_evaluation()[0].startswith("plain gradients")
    assert load_sanitizer("sanitize-noise").adaptive_evaluation() == ["BPDA for bit-depth", "EOT over 8 draws"]
