import copy

import pytest
import torch

import drqa_plugin as dq
from drqa_plugin.models.blocks import fold_batchnorm
from tests.conftest import randomise_batchnorm


def test_parameter_count_matches_published_checkpoint():
    model = dq.create_model("ckdn_r50")
    assert sum(p.numel() for p in model.parameters()) == 13_387_650
    assert len(model.state_dict()) == 290


def test_feature_shapes_at_288():
    model = dq.create_model()
    x = torch.randn(1, 3, 288, 288)
    with torch.no_grad():
        stem = model.restored_encoder.stem(x)
        feats = model.restored_encoder(x)
        comp = model.comparator(feats)
    assert stem.shape == (1, 64, 144, 144)
    assert feats.shape == (1, 256, 72, 72)
    assert comp.shape == (1, 512, 36, 36)


def test_stem_has_no_batchnorm_or_relu():
    enc = dq.create_model().restored_encoder
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        out = enc.stem(x)
    assert (out < 0).any(), "stem output must not be rectified"
    assert isinstance(enc.stem, torch.nn.Conv2d) and enc.stem.bias is None


def test_inference_is_the_student_path_of_the_training_pass():
    torch.manual_seed(1)
    model = randomise_batchnorm(dq.create_model())
    r, d, r2, p = (torch.randn(2, 3, 64, 64) for _ in range(4))
    with torch.no_grad():
        score = model(r, d)
        out = model(r, d, r2, p)
    assert score.shape == (2,) and ((score > 0) & (score < 1)).all()
    torch.testing.assert_close(out.dr, score)
    # The teacher path is the same comparator applied to the pristine reference.
    torch.testing.assert_close(out.fr, model(r, p))
    expected_gap = (model.reference_encoder(d) - model.reference_encoder(p)).pow(2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(out.feature_gap, expected_gap)
    assert out.nr.shape == (2,)


def test_training_paths_compute_only_what_is_asked():
    model = dq.create_model().train()
    r, d, r2, p = (torch.randn(2, 3, 64, 64) for _ in range(4))
    out = model(r, d, r2, p, paths=("nr",))
    assert out.dr is None and out.fr is None and out.feature_gap is None
    out.nr.sum().backward()
    assert model.reference_encoder.stem.weight.grad is None
    assert model.comparator[0].conv1.weight.grad is None
    assert model.nr_comparator[0].conv1.weight.grad is not None
    with pytest.raises(ValueError, match="unknown paths"):
        model(r, d, r2, p, paths=("dr", "typo"))
    out = model(r, d, r2, p, paths=("dr2",))
    assert out.dr is None and out.dr_2 is not None and out.fr is None


def test_second_student_path_scores_the_second_restoration_against_the_same_reference():
    model = randomise_batchnorm(dq.create_model())
    r, d, r2, p = (torch.randn(3, 3, 64, 64) for _ in range(4))
    with torch.no_grad():
        out = model(r, d, r2, p, paths=("dr", "fr", "gap", "dr2"))
        paper = model(r, d, r2, p, paths=("dr", "fr", "gap"))
    torch.testing.assert_close(out.dr_2, model(r2, d))
    torch.testing.assert_close(out.dr, paper.dr)
    torch.testing.assert_close(out.fr, paper.fr)
    assert paper.dr_2 is None
    with pytest.raises(ValueError, match="needs restored, degraded, restored_2 and pristine"):
        model(r, d, r2)


def test_mismatch_path_scores_each_restoration_against_the_next_samples_reference():
    model = randomise_batchnorm(dq.create_model())
    r, d, r2, p = (torch.randn(3, 3, 64, 64) for _ in range(4))
    with torch.no_grad():
        out = model(r, d, r2, p, paths=("dr", "drx"))
    torch.testing.assert_close(out.dr_x, model(r, d[[2, 0, 1]]))  # sample i against the reference of i - 1
    torch.testing.assert_close(out.dr, model(r, d))
    assert out.fr is None and out.dr_2 is None


def test_batchnorm_folding_is_exact(random_model):
    x, y = torch.randn(2, 3, 96, 96), torch.randn(2, 3, 96, 96)
    folded = fold_batchnorm(copy.deepcopy(random_model).eval())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    with torch.no_grad():
        torch.testing.assert_close(folded(x, y), random_model(x, y), atol=1e-5, rtol=0)


def test_imagenet_init_from_local_torchvision_resnet50(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    resnet = torchvision.models.resnet50(weights=None)  # random weights, no download
    path = tmp_path / "resnet50-local.pth"
    torch.save(resnet.state_dict(), path)
    model = dq.init_from_imagenet_resnet50(dq.create_model(), path)
    sd = resnet.state_dict()
    for ours in (model.restored_encoder.stem.weight, model.reference_encoder.stem.weight):
        torch.testing.assert_close(ours, sd["conv1.weight"])
    torch.testing.assert_close(model.reference_encoder.blocks[2].conv3.weight, sd["layer1.2.conv3.weight"])
    torch.testing.assert_close(model.nr_comparator[3].bn2.running_var, sd["layer2.3.bn2.running_var"])
    torch.testing.assert_close(model.comparator[0].downsample[0].weight, sd["layer2.0.downsample.0.weight"])


def test_imagenet_init_rejects_other_networks(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "layer1.0.conv1.weight": torch.zeros(64, 64, 3, 3)}, path)
    with pytest.raises(dq.WeightsError, match="ResNet-50"):
        dq.init_from_imagenet_resnet50(dq.create_model(), path)
