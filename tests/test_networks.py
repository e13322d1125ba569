"""Networks: shapes, initialisation, determinism, input validation, tiny-batch overfitting, and the AE losses."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from logdiff_core.autoencoder import ConvAutoencoder, PatchDiscriminator, gradient_loss, hinge_d_loss, hinge_g_loss
from logdiff_core.layers import group_norm, sinusoidal_embedding
from logdiff_core.mlp import MLPDenoiser
from logdiff_core.networks import build_denoiser, count_parameters
from logdiff_core.unet import UNet

@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine two spinning OpenMP
    threads made this file ~7x slower (75 s vs 11 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


SHARED_CONFIG = dict(base_channels=8, channel_mults=[1, 2], attention_resolution=8, num_heads=2, siren=False,
                     dropout=0.0, hidden=32, layers=2)


def tiny_unet(size: int = 8, **kwargs) -> UNet:
    return UNet(**{"in_channels": 1, "base_channels": 8, "channel_mults": (1, 2), "num_heads": 2,
                   "input_size": size, **kwargs})


def timesteps(batch: int) -> torch.Tensor:
    return torch.randint(0, 1000, (batch,))


def randomize_output_layer(model: nn.Module) -> None:
    """Replace the zero-initialised last layer so outputs depend on the whole network."""
    for p in list(model.parameters())[-2:]:
        nn.init.normal_(p, std=0.1)


def overfit(model: nn.Module, loss_fn, steps: int = 300, lr: float = 3e-3) -> tuple[float, float]:
    """(first loss, best loss) of Adam on a fixed batch; stops once the loss fell 10x."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    first = best = None
    for _ in range(steps):
        loss = loss_fn()
        first = loss.item() if first is None else first
        best = loss.item() if best is None else min(best, loss.item())
        if best < first / 10:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    return first, best


@pytest.mark.parametrize("size", [4, 8, 16, 32])
@pytest.mark.parametrize("channel_mults, siren", [((1,), False), ((1, 2), False), ((1, 2, 2), False),
                                                  ((1, 2, 2), True)])
def test_unet_output_shape(size, channel_mults, siren):
    model = tiny_unet(size, in_channels=3, out_channels=2, channel_mults=channel_mults, siren=siren)
    randomize_output_layer(model)
    out = model(torch.randn(2, 3, size, size), timesteps(2))
    assert out.shape == (2, 2, size, size)
    assert torch.isfinite(out).all() and out.abs().sum() > 0


def test_unet_out_channels_default_to_in_channels():
    assert tiny_unet(in_channels=3)(torch.randn(1, 3, 8, 8), timesteps(1)).shape == (1, 3, 8, 8)


def test_unet_attention_placement():
    def attention_levels(model):
        return [not isinstance(level.attn, nn.Identity) for level in model.encoder] + [
            not isinstance(model.middle.attn, nn.Identity)]

    # Encoder sides 32, 16, 8, then the middle block.
    with_attention = tiny_unet(32, channel_mults=(1, 2, 2), attention_resolution=8)
    assert attention_levels(with_attention) == [False, False, True, True]
    assert attention_levels(tiny_unet(32, channel_mults=(1, 2, 2), attention_resolution=0)) == [False] * 4


@pytest.mark.parametrize("model", [tiny_unet(), MLPDenoiser(5, hidden=16, layers=2)], ids=["unet", "mlp"])
def test_untrained_denoiser_predicts_zero(model):
    x = torch.randn(4, 1, 8, 8) if isinstance(model, UNet) else torch.randn(4, 5)
    assert torch.equal(model(x, timesteps(4)), torch.zeros_like(x))


def test_unet_channels_last_and_bf16_autocast():
    model = tiny_unet(in_channels=3)
    randomize_output_layer(model)
    x, t = torch.randn(2, 3, 8, 8), timesteps(2)
    reference = model(x, t)
    model = model.to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x.to(memory_format=torch.channels_last), t)
    assert out.dtype == torch.bfloat16 and out.shape == reference.shape
    assert torch.allclose(out.float(), reference, atol=0.1 * reference.abs().max().item())


def test_unet_compiles_without_graph_breaks():
    model = tiny_unet()
    x, t = torch.randn(2, 1, 8, 8), timesteps(2)
    torch._dynamo.reset()
    # fullgraph=True raises on any graph break, e.g. data-dependent Python control flow in forward.
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    assert torch.equal(compiled(x, t), model(x, t))


@pytest.mark.parametrize("channel_mults", [(), (1, 0), (2, -1)])
def test_unet_rejects_bad_channel_mults(channel_mults):
    with pytest.raises(ValueError, match="channel_mults"):
        tiny_unet(channel_mults=channel_mults)


def test_unet_rejects_input_size_not_divisible_by_downsampling():
    with pytest.raises(ValueError, match=r"4x4.*channel_mults=\(1, 2, 2, 2\)"):
        tiny_unet(4, channel_mults=(1, 2, 2, 2))
    model = tiny_unet(8, channel_mults=(1, 2, 2))
    with pytest.raises(ValueError, match=r"6x6.*channel_mults=\(1, 2, 2\)"):
        model(torch.randn(1, 1, 6, 6), timesteps(1))


@pytest.mark.parametrize("siren", [False, True])
def test_mlp_output_shape(siren):
    model = MLPDenoiser(7, hidden=32, layers=2, siren=siren)
    randomize_output_layer(model)
    out = model(torch.randn(5, 7), timesteps(5).float())
    assert out.shape == (5, 7) and out.abs().sum() > 0


def test_mlp_time_embedding_width_is_its_own():
    narrow, wide = MLPDenoiser(7, hidden=32, layers=2, time_dim=8), MLPDenoiser(7, hidden=32, layers=2, time_dim=32)
    assert narrow.time_embed.dim == 8 and narrow.blocks[0].time_proj[-1].in_features == 8
    assert count_parameters(narrow) < count_parameters(wide)
    assert MLPDenoiser(7, hidden=32, layers=2).time_embed.dim == 32  # as saved before time_dim existed: loadable


@pytest.mark.parametrize("native", [True, False])
def test_bf16_autocast_on_cpu_only_where_the_cpu_has_bf16_units(native, monkeypatch):
    from tasks.runtime import bf16_autocast

    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: native)
    model = MLPDenoiser(7, hidden=32, layers=2)
    with bf16_autocast(torch.device("cpu")):
        dtype = model.inp(torch.randn(2, 7)).dtype
    assert dtype == (torch.bfloat16 if native else torch.float32)
    with bf16_autocast(torch.device("cpu"), wanted=False):
        assert model.inp(torch.randn(2, 7)).dtype == torch.float32


def test_timestep_embedding_distinguishes_steps_and_accepts_int_or_float():
    t = torch.tensor([0, 1, 500, 999])
    emb = sinusoidal_embedding(t, 33)
    assert emb.shape == (4, 33)
    assert torch.equal(emb, sinusoidal_embedding(t.float(), 33))
    assert torch.cdist(emb, emb).fill_diagonal_(1.0).min() > 0.1
    assert torch.allclose(emb[:, 0], torch.sin(t.float()))  # fastest frequency is 1
    # The slowest frequency does not wrap around within 1000 steps, so distant steps stay distinguishable.
    assert (emb[1:, 15] > emb[:-1, 15]).all()


@pytest.mark.parametrize("model, shape", [(tiny_unet(), (2, 1, 8, 8)), (MLPDenoiser(5, hidden=16), (2, 5))],
                         ids=["unet", "mlp"])
def test_denoiser_output_depends_on_timestep(model, shape):
    randomize_output_layer(model)
    x = torch.randn(shape)
    assert not torch.allclose(model(x, torch.tensor([10, 10])), model(x, torch.tensor([900, 900])))


@pytest.mark.parametrize("channels, groups", [(8, 8), (64, 32), (96, 32), (48, 24), (7, 7), (3, 3)])
def test_group_norm_group_count(channels, groups):
    assert group_norm(channels).num_groups == groups


@pytest.mark.parametrize("downsample", [1, 2, 4])
@pytest.mark.parametrize("kl", [False, True])
def test_autoencoder_shapes(downsample, kl):
    ae = ConvAutoencoder(3, latent_channels=4, downsample=downsample, base_channels=8, kl=kl)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    z = ae.encode(x)
    assert z.shape == (2, 4, 16 // downsample, 16 // downsample)
    assert ae.decode(z).shape == x.shape
    mean, logvar = ae.encode_distribution(x)
    assert torch.equal(mean, z)
    assert (logvar is not None) == kl and (not kl or logvar.shape == z.shape)
    x_hat, kl_loss = ae(x, generator=torch.Generator().manual_seed(0))
    assert x_hat.shape == x.shape and kl_loss.shape == ()
    assert (kl_loss > 0) if kl else (kl_loss == 0)


def test_kl_autoencoder_samples_with_the_generator():
    ae = ConvAutoencoder(1, base_channels=8, kl=True)
    x = torch.randn(2, 1, 8, 8)
    a, b, c = (ae(x, generator=torch.Generator().manual_seed(s))[0] for s in (0, 0, 1))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("downsample", [0, 3, 8])
def test_autoencoder_rejects_bad_downsample(downsample):
    with pytest.raises(ValueError, match="downsample"):
        ConvAutoencoder(3, downsample=downsample)


def test_unet_overfits_fixed_batch():
    torch.manual_seed(0)
    model = tiny_unet(8)
    x, t, target = torch.randn(8, 1, 8, 8), timesteps(8), torch.randn(8, 1, 8, 8)
    first, best = overfit(model, lambda: F.mse_loss(model(x, t), target))
    assert best < first / 10


def test_autoencoder_overfits_fixed_batch():
    torch.manual_seed(0)
    ae = ConvAutoencoder(1, latent_channels=2, downsample=2, base_channels=8)
    x = torch.rand(8, 1, 8, 8) * 2 - 1
    first, best = overfit(ae, lambda: F.mse_loss(ae(x)[0], x))
    assert best < first / 10


@pytest.mark.parametrize("make, shape", [
    (lambda: tiny_unet(8, dropout=0.1), (4, 1, 8, 8)),
    (lambda: MLPDenoiser(6, hidden=16, layers=2, dropout=0.1), (4, 6)),
], ids=["unet", "mlp"])
def test_same_seed_gives_bit_identical_outputs(make, shape):
    def build_train_step_and_predict(seed):
        torch.manual_seed(seed)
        model = make()
        x, t = torch.randn(shape), timesteps(shape[0])
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        (model(x, t) - 1).pow(2).mean().backward()  # one step so the zero-init output layer moves
        opt.step()
        return model.eval()(x, t)

    a, b, c = build_train_step_and_predict(0), build_train_step_and_predict(0), build_train_step_and_predict(1)
    assert a.abs().sum() > 0
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_autoencoder_same_seed_gives_bit_identical_outputs():
    def build_and_reconstruct(seed):
        torch.manual_seed(seed)
        return ConvAutoencoder(1, base_channels=8, kl=True)(torch.randn(2, 1, 8, 8))[0]

    assert torch.equal(build_and_reconstruct(0), build_and_reconstruct(0))
    assert not torch.equal(build_and_reconstruct(0), build_and_reconstruct(1))


@pytest.mark.parametrize("kind, data_shape, network", [("unet", (3, 8, 8), UNet), ("mlp", (6,), MLPDenoiser)])
def test_build_denoiser_takes_the_shared_config(kind, data_shape, network):
    model = build_denoiser(kind, data_shape, **SHARED_CONFIG)
    assert type(model) is network
    randomize_output_layer(model)
    x = torch.randn(2, *data_shape)
    assert model(x, timesteps(2)).shape == x.shape


def test_build_denoiser_passes_config_through():
    assert count_parameters(build_denoiser("mlp", (6,), **{**SHARED_CONFIG, "hidden": 64})) > count_parameters(
        build_denoiser("mlp", (6,), **SHARED_CONFIG))
    unet = build_denoiser("unet", (3, 16, 16), **{**SHARED_CONFIG, "channel_mults": [1, 2, 2]})
    assert len(unet.encoder) == 3 and unet.encoder[0].block.conv1[0].out_channels == 8


def test_build_denoiser_errors():
    with pytest.raises(ValueError, match=r"'transformer'.*\['mlp', 'unet'\]"):
        build_denoiser("transformer", (3, 8, 8))
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        build_denoiser("unet", (6,))
    with pytest.raises(TypeError, match="not_a_key"):  # only the shared config keys are dropped silently
        build_denoiser("mlp", (6,), not_a_key=1)


def test_count_parameters():
    assert count_parameters(nn.Linear(3, 2)) == 8
    assert count_parameters(nn.Sequential(nn.Linear(3, 2), nn.Conv2d(2, 4, 3))) == 8 + 2 * 4 * 9 + 4


@pytest.mark.parametrize("size, logits_side", [(8, 2), (32, 4)])
def test_patch_discriminator_returns_logit_map(size, logits_side):
    disc = PatchDiscriminator(3, base_channels=8, input_size=size)
    logits = disc(torch.randn(2, 3, size, size))
    assert logits.shape == (2, 1, logits_side, logits_side)
    assert logits.std() > 0


def test_hinge_losses():
    confident_real, confident_fake = torch.full((2, 1, 2, 2), 2.0), torch.full((2, 1, 2, 2), -2.0)
    assert hinge_d_loss(confident_real, confident_fake) == 0
    assert hinge_d_loss(torch.zeros(4), torch.zeros(4)) == 1
    assert hinge_g_loss(confident_fake) == 2 and hinge_g_loss(confident_real) == -2


def test_gradient_loss_penalises_blur_not_shifts():
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    blurred = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    assert gradient_loss(x, x) == 0
    assert gradient_loss(x + 0.5, x) < 1e-6  # a brightness shift keeps every edge
    assert gradient_loss(blurred, x) > 0.1


def test_the_mlp_denoises_image_latents_flattened():
    model = build_denoiser("mlp", (3, 4, 4), hidden=32, layers=2)
    x = torch.randn(5, 3, 4, 4)
    assert model(x, torch.arange(5)).shape == x.shape and model.inp.in_features == 48


def test_min_snr_weights_and_the_cosine_learning_rate():
    from types import SimpleNamespace

    from logdiff_core.diffusion import loss_weights
    from logdiff_core.schedules import Schedule
    from tasks.train import lr_factor

    schedule = Schedule.from_config("linear", 1000)
    t = torch.tensor([0, 500, 999])
    weights = loss_weights(schedule, t, 5.0)
    snr = schedule.alpha_bars[t] / (1 - schedule.alpha_bars[t])
    assert torch.allclose(weights, torch.clamp(snr, max=5.0) / snr) and weights[0] < 1e-3 and weights[-1] == 1
    assert loss_weights(schedule, t, None) is None
    cosine = SimpleNamespace(lr_schedule="cosine", warmup_steps=10, steps=110)
    assert [round(lr_factor(cosine, s), 3) for s in (0, 9, 10, 60, 110)] == [0.1, 1.0, 1.0, 0.5, 0.0]
    constant = SimpleNamespace(lr_schedule="constant", warmup_steps=10, steps=110)
    assert lr_factor(constant, 100) == 1.0
