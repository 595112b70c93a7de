"""Generators for any input shape, their export, and the pictures of them."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from kegnet_core.export import save_generator
from kegnet_core.generators import Decoder, build_generator, standardise_images
from kegnet_core.images import latent_walk, png_bytes, sample_grid


@pytest.mark.parametrize(
    "shape", [(1, 32, 32), (3, 32, 32), (1, 8, 8), (1, 28, 28), (2, 20, 48), (3, 4, 4), (12,), (2, 40)]
)
def test_generator_output_shape(shape):
    generator = build_generator(shape, n_classes=5, noise_dim=7)
    labels = torch.eye(5)[torch.tensor([0, 1, 2, 4])]
    out = generator(labels, torch.randn(4, 7))
    assert out.shape == (4, *shape)
    decoder = Decoder(shape, 7)
    assert decoder(out).shape == (4, 7)


def test_decoder_reads_large_images_pooled():
    # The paper's 32x32 is read whole; 3x224x224 through a 32x32 pool, not 150,528 weights a unit.
    small, large = Decoder((1, 32, 32), 7), Decoder((3, 224, 224), 7)
    first = [next(m for m in d.modules() if isinstance(m, torch.nn.Linear)) for d in (small, large)]
    assert [layer.in_features for layer in first] == [1 * 32 * 32, 3 * 32 * 32]
    assert large(torch.randn(2, 3, 224, 224)).shape == (2, 7)
    assert Decoder((3, 20, 48), 7)(torch.randn(2, 3, 20, 48)).shape == (2, 7)


def test_images_are_standardised_per_image_and_channel():
    images = standardise_images(torch.rand(3, 2, 5, 5) * 10 + 4)
    flat = images.flatten(2)
    assert torch.allclose(flat.mean(2), torch.zeros(3, 2), atol=1e-5)
    assert torch.allclose(flat.std(2), torch.ones(3, 2), atol=1e-5)


def test_paper_generator_layout_for_32x32():
    generator = build_generator((1, 32, 32), n_classes=10, noise_dim=10)
    widths = [
        layer.out_channels for layer in generator.modules() if isinstance(layer, torch.nn.ConvTranspose2d)
    ]
    assert widths == [64, 16, 4, 1]


def test_exported_generator_runs_without_the_project(tmp_path):
    generator = build_generator((1, 8, 8), n_classes=3, noise_dim=4).eval()
    path = save_generator(generator, tmp_path / "g.pt", n_classes=3, noise_dim=4)
    script = (
        "import sys, torch\n"
        "g = torch.jit.load(sys.argv[1])\n"
        "y = torch.eye(g.n_classes)\n"
        "x = g(y, torch.randn(g.n_classes, g.noise_dim))\n"
        "assert x.shape == (3, 1, 8, 8), x.shape\n"
        "assert not any(m.startswith(('kegnet', 'api', 'worker')) for m in sys.modules)\n"
    )
    subprocess.run([sys.executable, "-I", "-c", script, str(path)], check=True, cwd=tmp_path)


def test_pictures_are_png_with_one_row_per_class():
    generator = build_generator((1, 8, 8), n_classes=4, noise_dim=3).eval()
    grid = sample_grid(generator, 4, 3, (1, 8, 8), columns=6)
    # 8x8 samples are drawn 4x larger, with 2 pixels between them.
    assert grid.shape == (4 * (32 + 2) + 2, 6 * (32 + 2) + 2)
    assert png_bytes(grid).startswith(b"\x89PNG\r\n\x1a\n")
    walk = latent_walk(generator, 4, 3, (1, 8, 8), steps=5, rows=2)
    assert walk.shape == (2 * (32 + 2) + 2, 5 * (32 + 2) + 2)


def test_signal_samples_are_pictured_as_strips_one_row_per_class():
    generator = build_generator((2, 40), n_classes=3, noise_dim=4).eval()
    grid = sample_grid(generator, 3, 4, (2, 40), columns=5)
    # Each 2-channel signal is a strip 8 pixels high (4 per channel) and 40 wide.
    assert grid.shape == (3 * (8 + 2) + 2, 5 * (40 + 2) + 2)
    assert png_bytes(grid).startswith(b"\x89PNG")
