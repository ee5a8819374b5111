"""paulkit.models: PatchNet's shapes, stripes, patch pooling, weights and state-dict loading."""

from __future__ import annotations

import math
import urllib.error

import pytest
import torch
import torch.nn.functional as F

from paulkit import models as M
from paulkit import utils


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    return M.PatchNet(num_classes=7, arch="small", small_width=8, pretrain=True)


@pytest.fixture(scope="module")
def resnet50():
    torch.manual_seed(0)
    return M.PatchNet()  # the paper's unsupervised-stage network, no download


# --------------------------------------------------------------------------- stripes


def test_stripe_thetas_are_the_papers_six_stripes():
    theta = M.stripe_thetas(6)
    assert theta.shape == (6, 2, 3)
    t = torch.tensor([-5, -3, -1, 1, 3, 5]) / 6
    expected = torch.zeros(6, 2, 3)
    expected[:, 0, 0], expected[:, 1, 1], expected[:, 1, 2] = 1.0, 1 / 6, t
    torch.testing.assert_close(theta, expected)


def test_patch_generator_starts_with_six_stripes(small):
    out = small(torch.randn(3, 3, 64, 32))
    torch.testing.assert_close(out.thetas, M.stripe_thetas(6).expand(3, 6, 2, 3))
    last = small.patch_generator.fc_loc[2]
    assert torch.count_nonzero(last.weight) == 0


def test_stripes_pool_their_own_rows():
    # A map whose value is its row index: linear interpolation of a linear function is
    # exact, so stripe i's average is its centre row (t_i + 1) / 2 * (h - 1).
    h, w = 13, 4
    fmap = torch.arange(h, dtype=torch.float32).view(1, 1, h, 1).expand(2, 1, h, w)
    thetas = M.stripe_thetas(6).expand(2, 6, 2, 3)
    pooled = M.pool_patches(fmap, thetas)
    assert pooled.shape == (2, 6, 1)
    torch.testing.assert_close(pooled[0, :, 0], torch.tensor([1.0, 3, 5, 7, 9, 11]))
    maps = M.sample_patches(fmap, thetas)
    assert maps.shape == (2, 6, 1, h, w)
    torch.testing.assert_close(maps[0, 0, 0, 0, 0], torch.tensor(0.0))  # top of stripe 0
    torch.testing.assert_close(maps[0, 0, 0, -1, 0], torch.tensor(2.0))  # its bottom


@pytest.mark.parametrize("kind", ["stripes", "moved", "wild"])
def test_pool_patches_equals_grid_sample_mean_in_value_and_gradient(kind):
    torch.manual_seed(1)
    b, c, h, w, p = 3, 5, 12, 6, 6
    thetas = M.stripe_thetas(p).expand(b, p, 2, 3).clone()
    if kind == "moved":
        thetas = thetas + 0.07 * torch.randn(b, p, 2, 3)
    elif kind == "wild":  # rotations and patches partly outside the map (zeros padding)
        thetas = torch.randn(b, p, 2, 3)
    fmap = torch.randn(b, c, h, w)
    ref_in = [fmap.clone().requires_grad_(), thetas.clone().requires_grad_()]
    new_in = [fmap.clone().requires_grad_(), thetas.clone().requires_grad_()]
    ref = M.sample_patches(*ref_in).mean((-2, -1))
    new = M.pool_patches(*new_in)
    torch.testing.assert_close(new, ref, rtol=1e-5, atol=1e-6)
    weights = torch.randn_like(ref)
    (ref * weights).sum().backward()
    (new * weights).sum().backward()
    for a, r in zip(new_in, ref_in):
        torch.testing.assert_close(a.grad, r.grad, rtol=1e-4, atol=1e-5)


def test_patch_functions_reject_bad_shapes():
    with pytest.raises(ValueError, match="thetas"):
        M.pool_patches(torch.randn(2, 3, 8, 4), torch.randn(3, 6, 2, 3))
    with pytest.raises(ValueError, match="feature_map"):
        M.sample_patches(torch.randn(3, 8, 4), torch.randn(3, 6, 2, 3))


# --------------------------------------------------------------------------- PatchNet


def test_small_patchnet_outputs(small):
    small.train()
    x = torch.randn(4, 3, 64, 32)
    out = small(x)
    assert isinstance(out, M.PatchNetOutput)
    assert out.patch_feats.shape == (4, 6, 256)
    assert out.embedding.shape == (4, 6 * 128)
    assert out.logits.shape == (4, 6, 7)
    assert out.thetas.shape == (4, 6, 2, 3)
    torch.testing.assert_close(out.patch_feats.norm(dim=-1), torch.ones(4, 6))
    assert small.feature_map(x).shape == (4, 64, 16, 8)  # (H/4) x (W/4), 8 x small_width


def test_descriptor_is_the_concatenated_patch_features(small):
    small.eval()
    x = torch.randn(3, 3, 64, 32)
    with torch.no_grad():
        desc, out = small.descriptor(x), small(x)
    assert desc.shape == (3, 6 * 256)
    torch.testing.assert_close(desc, out.patch_feats.flatten(1))
    small.train()


def test_unsupervised_embedding_is_cosine_to_normalised_embedding_rows():
    torch.manual_seed(0)
    net = M.PatchNet(arch="small", small_width=8, embed_dim=5).eval()
    with torch.no_grad():
        out = net(torch.randn(2, 3, 64, 32))
    assert out.logits is None and out.embedding.shape == (2, 6 * 5)
    rows = F.normalize(net.embed.weight[2], dim=1)  # patch 2's (E, D) rows
    torch.testing.assert_close(out.embedding[:, 10:15], out.patch_feats[:, 2] @ rows.t())
    assert out.embedding.abs().max() <= 1.0 + 1e-6


def test_pretrain_embedding_and_logits_read_the_unnormalised_relu_feature():
    torch.manual_seed(0)
    net = M.PatchNet(num_classes=4, arch="small", small_width=8, embed_dim=5, pretrain=True)
    net.eval()
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        out = net(x)
        fmap = net.feature_map(x)
        h = net.reduction(M.pool_patches(fmap, net.patch_generator(fmap)))
    assert (h >= 0).all()  # ReLU in pretraining
    torch.testing.assert_close(out.patch_feats, F.normalize(h, dim=-1))
    torch.testing.assert_close(
        out.logits[:, 1], h[:, 1] @ net.classifier.weight[1].t() + net.classifier.bias[1]
    )
    torch.testing.assert_close(
        out.embedding[:, :5], h[:, 0] @ net.embed.weight[0].t() + net.embed.bias[0]
    )


def test_patch_linear_is_p_separate_linear_layers():
    torch.manual_seed(0)
    layer = M.PatchLinear(3, 4, 2)
    x = torch.randn(5, 3, 4)
    y = layer(x)
    for p in range(3):
        torch.testing.assert_close(y[:, p], F.linear(x[:, p], layer.weight[p], layer.bias[p]))


def test_param_groups_partition_the_parameters(small):
    groups = small.param_groups()
    assert set(groups) == {"backbone", "stn", "new", "embed"}
    ids = [id(p) for g in groups.values() for p in g]
    assert len(ids) == len(set(ids)) == len(list(small.parameters()))
    assert {id(p) for p in groups["stn"]} == {id(p) for p in small.patch_generator.parameters()}
    assert {id(p) for p in groups["embed"]} == {id(p) for p in small.embed.parameters()}
    assert id(small.classifier.weight) in {id(p) for p in groups["new"]}


def test_default_patchnet_is_the_papers_unsupervised_resnet50(resnet50):
    hp = resnet50.hparams
    assert (hp["arch"], hp["num_patches"], hp["patch_dim"], hp["last_stride"]) == (
        "resnet50",
        6,
        256,
        1,
    )
    assert resnet50.classifier is None and not resnet50.pretrain
    gen = resnet50.patch_generator
    assert gen.localization[0].weight.shape == (4096, 2048, 3, 3)
    assert gen.fc_loc[0].weight.shape == (512, 4096)
    assert resnet50.backbone.layer4[0].conv2.stride == (1, 1)
    assert resnet50.backbone.layer4[0].downsample[0].stride == (1, 1)


def test_resnet50_shapes_on_a_small_input(resnet50):
    x = torch.randn(2, 3, 96, 48)
    with torch.no_grad():
        out = resnet50(x)
    assert out.patch_feats.shape == (2, 6, 256)
    assert out.embedding.shape == (2, 768)
    assert out.thetas.shape == (2, 6, 2, 3)


def test_resnet18_last_stride_one_doubles_the_map():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 96, 48)
    with torch.no_grad():
        net1 = M.PatchNet(num_classes=3, arch="resnet18", pretrain=True)
        assert net1.feature_map(x).shape == (2, 512, 6, 3)
        out = net1(x)
        assert (out.patch_feats.shape, out.logits.shape) == ((2, 6, 256), (2, 6, 3))
        trunk2, c = M.resnet_backbone("resnet18", last_stride=2)
        assert (c, trunk2(x).shape[-2:]) == (512, (3, 2))


def test_bad_inputs_raise_clear_errors(small):
    with pytest.raises(ValueError, match="RGB"):
        small(torch.randn(2, 1, 64, 32))
    with pytest.raises(ValueError, match="3x3"):
        small(torch.randn(2, 3, 8, 8))  # a 2x2 map
    with pytest.raises(ValueError, match="arch"):
        M.PatchNet(arch="vgg16")
    with pytest.raises(ValueError, match="weights"):
        M.PatchNet(arch="small", weights="imagenet")


# --------------------------------------------------------------------------- weights


def test_imagenet_weights_offline_error_names_file_and_folder(monkeypatch, tmp_path):
    from torchvision.models import ResNet18_Weights

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(type(ResNet18_Weights.IMAGENET1K_V1), "get_state_dict", offline)
    with pytest.raises(FileNotFoundError) as err:
        M.resnet_backbone("resnet18", weights="imagenet")
    msg = str(err.value)
    assert "resnet18-f37072fd.pth" in msg and str(tmp_path / "hub" / "checkpoints") in msg


def test_local_weights_file_loads_offline_and_a_foreign_one_is_named(tmp_path):
    from torchvision.models import resnet18

    torch.manual_seed(0)
    ref = resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(ref.state_dict(), path)
    trunk, _ = M.resnet_backbone("resnet18", weights=path)
    torch.testing.assert_close(trunk.layer3[1].conv2.weight, ref.layer3[1].conv2.weight)
    with pytest.raises(ValueError, match="resnet50"):
        M.resnet_backbone("resnet50", weights=path)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        M.resnet_backbone("resnet18", weights=tmp_path / "missing.pth")


# --------------------------------------------------------------------------- state dicts


def test_adaptation_model_from_a_pretraining_checkpoint(small, tmp_path):
    state = small.state_dict()
    adapt = M.load_pretrained(M.PatchNet(arch="small", small_width=8), state)
    assert adapt.classifier is None and not adapt.pretrain
    assert not adapt.reduction.relu
    torch.testing.assert_close(adapt.embed.weight, small.embed.weight)
    torch.testing.assert_close(adapt.backbone.block3[0].weight, small.backbone.block3[0].weight)
    path = tmp_path / "ckpt.pt"
    utils.atomic_save({"format": "paulkit-checkpoint/1", "model": state}, path)
    adapt = M.load_pretrained(M.PatchNet(arch="small", small_width=8), path)
    torch.testing.assert_close(adapt.reduction.bn.running_var, small.reduction.bn.running_var)


@pytest.mark.parametrize(
    "kwargs, word",
    [
        (dict(arch="resnet18"), "arch"),
        (dict(arch="small", small_width=16), "small_width"),
        (dict(arch="small", small_width=8, num_patches=4), "num_patches"),
        (dict(arch="small", small_width=8, patch_dim=128), "patch_dim"),
        (dict(arch="small", small_width=8, num_classes=9), "num_classes"),
    ],
)
def test_state_dict_mismatch_names_what_differs(small, kwargs, word):
    model = M.PatchNet(**kwargs)
    with pytest.raises(ValueError, match=word):
        M.load_pretrained(model, small.state_dict())


def test_state_dict_without_classifier_cannot_fill_one(small):
    adapt = M.load_pretrained(M.PatchNet(arch="small", small_width=8), small.state_dict())
    with pytest.raises(ValueError, match="num_classes"):
        M.load_pretrained(
            M.PatchNet(num_classes=7, arch="small", small_width=8), adapt.state_dict()
        )


def test_foreign_state_dicts_and_files_are_refused(tmp_path):
    with pytest.raises(ValueError, match="not a PatchNet"):
        M.load_pretrained(M.PatchNet(arch="small", small_width=8), {"fc.weight": torch.zeros(1)})
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(utils.CheckpointError):
        M.load_pretrained(M.PatchNet(arch="small", small_width=8), bad)


def test_describe_state_dict(small):
    d = M.describe_state_dict(small.state_dict())
    assert d["arch"] == "small" and d["small_width"] == 8 and d["num_classes"] == 7
    assert (d["num_patches"], d["patch_dim"], d["embed_dim"]) == (6, 256, 128)
    assert d["stn_channels"] == small.patch_generator.localization[0].out_channels
    assert math.isclose(d["in_channels"], 64)
