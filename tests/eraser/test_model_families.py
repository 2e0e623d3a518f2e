"""Unlink on the layer layouts of real model families (small configs, random weights)."""

import torch
import torchvision

import eraser


def gain(weight, basis):
    return float((weight.detach().double() @ basis).norm() / weight.detach().double().norm())


def test_timm_vit_fused_qkv_and_head():
    import timm

    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2, num_classes=5
    ).eval()
    x = torch.randn(6, 3, 32, 32)
    patch = eraser.erase_classes(model, x, layers=["blocks.1.attn.qkv", "head"], k=2)
    assert set(patch.layers) == {"blocks.1.attn.qkv", "head"}
    assert patch.edits["blocks.1.attn.qkv"].shape == (3 * 192, 192)
    assert gain(model.blocks[1].attn.qkv.weight, patch.edits["blocks.1.attn.qkv"].basis[0]) < 1e-6
    assert eraser.erase_classes(model, x, k=1).layers == ["head"]  # timm's get_classifier()


def test_torchvision_vit_multihead_attention_and_head():
    model = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=5
    ).eval()
    x = torch.randn(6, 3, 32, 32)
    patch = eraser.erase_classes(model, x, layers=r"encoder\.layers\.encoder_layer_0\.self_attention", k=3)
    e = patch.edits["encoder.layers.encoder_layer_0.self_attention"]
    assert e.kind == "mha"
    assert gain(model.encoder.layers[0].self_attention.in_proj_weight, e.basis[0]) < 1e-6
    assert eraser.erase_classes(model, x, k=1).layers == ["heads.head"]


def test_torchvision_resnet_conv_layer():
    model = torchvision.models.resnet18(num_classes=5).eval()
    x = torch.randn(2, 3, 32, 32)
    before = model(x).detach()
    patch = eraser.erase_classes(model, x, layers=["layer1.0.conv1"], k=4)
    assert patch.edits["layer1.0.conv1"].basis.shape == (1, 64 * 9, 4)
    assert gain(model.layer1[0].conv1.weight.flatten(1), patch.edits["layer1.0.conv1"].basis[0]) < 1e-6
    patch.revert(model)
    torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-5)
