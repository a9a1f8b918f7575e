import copy

import pytest
import torch

import drqa_plugin as dq
from drqa_plugin.models.blocks import fold_batchnorm
from drqa_plugin.preprocess import normalize
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


def _fake_stlpips_alex(path):
    """A file with the ST-LPIPS AlexNet keys and shapes (random values), as its wheel stores them."""
    torch.manual_seed(0)
    state = {"scaling_layer.shift": torch.zeros(1, 3, 1, 1), "net.slice1.0.weight": torch.randn(64, 3, 11, 11),
             "net.slice1.0.bias": torch.randn(64), "net.slice1.1.filt": torch.rand(64, 1, 3, 3),
             "net.slice2.4.filt": torch.rand(64, 1, 3, 3), "net.slice2.5.weight": torch.randn(192, 64, 5, 5),
             "net.slice2.5.bias": torch.randn(192), "net.slice3.9.weight": torch.randn(384, 192, 3, 3)}
    torch.save(state, path)
    return state


def test_alex_variant_has_the_comparators_input_shape_and_every_path():
    model = dq.create_model("ckdn_alex").eval()
    x = torch.rand(2, 3, 64, 64)
    # Same (256 channels, 1/4 resolution) as the ResNet encoders, so the comparator and heads are the paper's.
    assert model.restored_encoder(x).shape == dq.create_model().restored_encoder(x).shape == (2, 256, 16, 16)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.restored_encoder.modules())
    out = model.train()(x, x.flip(-1), x.flip(-2), x, paths=("dr", "fr", "nr", "gap", "dr2", "drx"))
    assert all(v.shape == (2,) for v in out if v is not None)
    frozen = dq.models.ckdn.frozen_inference_copy(model.eval(), differentiable=False)
    with torch.no_grad():
        torch.testing.assert_close(frozen(x, x.flip(-1)), model(x, x.flip(-1)), atol=1e-5, rtol=0)


def test_blur_downsample_keeps_a_constant_and_halves_the_size():
    from drqa_plugin.models.blocks import BlurDownsample

    y = BlurDownsample(4)(torch.full((1, 4, 10, 10), 0.7))
    assert y.shape == (1, 4, 5, 5)
    torch.testing.assert_close(y, torch.full_like(y, 0.7))  # the filter sums to one, reflect padding


def test_stlpips_alex_init_fills_both_encoders_and_nothing_else(tmp_path):
    from drqa_plugin.convert import init_from_stlpips_alex

    state = _fake_stlpips_alex(tmp_path / "alex_shift_tolerant.pth")
    model = dq.create_model("ckdn_alex")
    head_before = model.head[0].weight.clone()
    init_from_stlpips_alex(model, tmp_path / "alex_shift_tolerant.pth")
    for encoder in (model.restored_encoder, model.reference_encoder):
        torch.testing.assert_close(encoder.conv1.weight, state["net.slice1.0.weight"])
        torch.testing.assert_close(encoder.conv2.bias, state["net.slice2.5.bias"])
        torch.testing.assert_close(encoder.down1.filt, state["net.slice1.1.filt"])
        torch.testing.assert_close(encoder.down2.filt, state["net.slice2.4.filt"])
    torch.testing.assert_close(model.head[0].weight, head_before)
    with pytest.raises(dq.WeightsError, match="need model.arch ckdn_alex"):
        init_from_stlpips_alex(dq.create_model(), tmp_path / "alex_shift_tolerant.pth")
    torch.save({"net.slice1.0.weight": torch.zeros(64, 3, 11, 11)}, tmp_path / "partial.pth")
    with pytest.raises(dq.WeightsError, match="no tensor net.slice1.0.bias"):
        init_from_stlpips_alex(dq.create_model("ckdn_alex"), tmp_path / "partial.pth")


def test_trainer_init_stlpips_alex_reads_the_installed_wheel():
    pytest.importorskip("stlpips_pytorch", reason="stlpips-pytorch is not installed (make install-test adds it)")
    from drqa_plugin.data.labellers import stlpips_weights_path
    from drqa_plugin.train.config import load_config
    from drqa_plugin.train.trainer import build_model

    model = build_model(load_config("quality_cpu", ["model.arch=ckdn_alex", "model.init=stlpips_alex"]))
    state = torch.load(stlpips_weights_path("alex"), map_location="cpu", weights_only=True)
    torch.testing.assert_close(model.reference_encoder.conv1.weight, state["net.slice1.0.weight"])
    with pytest.raises(dq.WeightsError, match="ckdn_alex"):
        build_model(load_config("quality_cpu", ["model.init=stlpips_alex"]))


def test_alex_variant_round_trips_through_save_model(tmp_path):
    model = dq.create_model("ckdn_alex")
    dq.save_model(model, tmp_path / "alex.safetensors")
    assert dq.read_metadata(tmp_path / "alex.safetensors")["arch"] == "ckdn_alex"
    loaded = dq.load_model(tmp_path / "alex.safetensors")
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, x.flip(-1)), model(x, x.flip(-1)))


def test_context_variant_conditions_every_scored_path_on_its_input():
    torch.manual_seed(2)
    model = randomise_batchnorm(dq.create_model("ckdn_r50_ctx"))
    assert model.head[0].in_features == 512 + 256 and dq.create_model().head[0].in_features == 512
    r, d, r2, p = (torch.randn(3, 3, 64, 64) for _ in range(4))
    enc_r, enc_ref = model.restored_encoder, model.reference_encoder
    with torch.no_grad():
        out = model(r, d, r2, p, paths=("dr", "fr", "nr", "gap", "dr2", "drx"))
        context = enc_r(d).mean(dim=(2, 3))
        torch.testing.assert_close(model.input_context(d), context)
        torch.testing.assert_close(out.dr, model(r, d))
        torch.testing.assert_close(out.dr_2, model(r2, d))
        torch.testing.assert_close(out.dr_x, model(r, d[[2, 0, 1]]))  # the other sample's reference and context
        # The teacher compares with the pristine image and reads the same degraded input's context.
        torch.testing.assert_close(out.fr, model.compare(enc_r(r), enc_ref(p), context))
        # Same reference features, another input's context: another score.
        assert not torch.allclose(model.compare(enc_r(r), enc_ref(d), context.roll(1, 0)), out.dr)
        scorer_path = model.score_pooled(model.pooled_features(r, d))
    torch.testing.assert_close(scorer_path, out.dr)
    with pytest.raises(ValueError, match="needs the input's context"):
        model.compare(enc_r(r), enc_ref(d))


def test_detail_variant_scores_each_path_with_its_own_pair_of_images():
    torch.manual_seed(4)
    model = randomise_batchnorm(dq.create_model("ckdn_r50_detail"))
    assert model.head[0].in_features == 512 + 2 * 16 and model.detail is not None
    assert dq.create_model().detail is None
    r, d, r2, p = (torch.randn(3, 3, 64, 64) for _ in range(4))
    enc_r, enc_ref = model.restored_encoder, model.reference_encoder
    with torch.no_grad():
        out = model(r, d, r2, p, paths=("dr", "fr", "nr", "gap", "dr2", "drx"))
        detail = model.detail_features(r, d)
        assert detail.shape == (3, 32) and (detail[:, 16:] >= detail[:, :16]).all()  # RMS >= mean of ReLU outputs
        torch.testing.assert_close(out.dr, model(r, d))
        torch.testing.assert_close(out.dr_2, model(r2, d))
        torch.testing.assert_close(out.dr_x, model(r, d[[2, 0, 1]]))
        # The teacher's detail branch compares the restored image with the pristine one.
        torch.testing.assert_close(out.fr, model.compare(enc_r(r), enc_ref(p), detail=model.detail_features(r, p)))
        # Same encoder features, the detail of another pair: another score.
        assert not torch.allclose(model.compare(enc_r(r), enc_ref(d), detail=detail.roll(1, 0)), out.dr)
        scorer_path = model.score_pooled(model.pooled_features(r, d))
    torch.testing.assert_close(scorer_path, out.dr)
    with pytest.raises(ValueError, match="needs the pair's detail features"):
        model.compare(enc_r(r), enc_ref(d))


@pytest.mark.parametrize("arch", ["ckdn_r50_ctx", "ckdn_r50_detail"])
def test_head_variants_fold_save_score_and_train_a_restorer(tmp_path, arch):
    torch.manual_seed(3)
    model = randomise_batchnorm(dq.create_model(arch))
    x, y = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    frozen = dq.models.ckdn.frozen_inference_copy(model, differentiable=False)
    cfg = model.pretrained_cfg.preprocess
    with torch.no_grad():
        expected = model(normalize(x, cfg), normalize(y, cfg))
        torch.testing.assert_close(frozen(normalize(x, cfg), normalize(y, cfg)), expected, atol=1e-5, rtol=0)
    dq.save_model(model, tmp_path / "variant.safetensors")
    assert dq.read_metadata(tmp_path / "variant.safetensors")["arch"] == arch
    scorer = dq.DRIQA(str(tmp_path / "variant.safetensors"), preprocess="none", device="cpu")
    torch.testing.assert_close(scorer(x, y), expected, atol=1e-5, rtol=0)
    loss = dq.DRIQALoss(weights=str(tmp_path / "variant.safetensors"), preprocess="none")
    restored = x.clone().requires_grad_(True)
    penalty = loss(restored, y)
    torch.testing.assert_close(penalty, (1 - expected).mean(), atol=1e-5, rtol=0)
    penalty.backward()
    assert restored.grad is not None and restored.grad.abs().sum() > 0


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["ckdn_r50_ctx", "ckdn_r50_detail"])
def test_trainer_trains_and_exports_the_head_variants(tmp_path, arch):
    import subprocess
    import sys

    from test_train_distributed import REPO, TINY, _env

    cmd = [sys.executable, "-m", "drqa_plugin.train", "--config", TINY, f"model.arch={arch}",
           f"output_dir={tmp_path}"]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(False), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert dq.read_metadata(tmp_path / "model.safetensors")["arch"] == arch
    scorer = dq.DRIQA(str(tmp_path / "model.safetensors"), preprocess="none")
    x = torch.rand(2, 3, 64, 64)
    scores = scorer(x, x.flip(-1))
    assert scores.shape == (2,) and torch.isfinite(scores).all()
