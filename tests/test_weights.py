import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import drqa_plugin as dq


def test_roundtrip_keeps_tensors_and_metadata(random_model, weights_file):
    loaded = dq.load_model(weights_file)
    for key, value in random_model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)
    meta = dq.read_metadata(weights_file)
    assert meta["arch"] == "ckdn_r50"
    assert meta["higher_is_better"] == "true"
    assert json.loads(meta["score_range"]) == [0.0, 1.0]
    pre = json.loads(meta["preprocess"])
    assert (pre["resize_shorter"], pre["crop"]) == (329, 288)
    assert (pre["restored_interpolation"], pre["reference_interpolation"]) == ("bicubic", "nearest")
    assert meta["provenance"] == "random weights for tests"
    assert loaded.pretrained_cfg.preprocess == dq.PreprocessConfig()
    assert not loaded.training


def test_load_to_dtype(weights_file):
    model = dq.load_model(weights_file, dtype=torch.bfloat16)
    assert model.head[0].weight.dtype == torch.bfloat16


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        dq.load_model(tmp_path / "nope.safetensors")


def test_truncated_file(tmp_path, weights_file):
    bad = tmp_path / "truncated.safetensors"
    bad.write_bytes(weights_file.read_bytes()[: weights_file.stat().st_size // 2])
    with pytest.raises(dq.WeightsError, match="truncated or corrupt"):
        dq.load_model(bad)


def test_garbage_file(tmp_path):
    bad = tmp_path / "garbage.safetensors"
    bad.write_bytes(b"\x00\x01not a safetensors file at all")
    with pytest.raises(dq.WeightsError, match="truncated or corrupt"):
        dq.load_model(bad)


def test_foreign_safetensors_is_rejected(tmp_path):
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, other)
    with pytest.raises(dq.WeightsError, match="not a drqa-plugin weights file"):
        dq.load_model(other)


def test_unknown_architecture(tmp_path, random_model):
    path = tmp_path / "x.safetensors"
    dq.save_weights(random_model.state_dict(), path)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, path, metadata={**meta, "arch": "ckdn_vit"})
    with pytest.raises(dq.WeightsError, match="'ckdn_vit' is not known"):
        dq.load_model(path)


def test_shape_and_name_mismatches_are_named(tmp_path, random_model):
    sd = dict(random_model.state_dict())
    sd["head.0.weight"] = torch.zeros(10, 512)
    del sd["comparator.0.conv1.weight"]
    sd["extra.weight"] = torch.zeros(1)
    path = tmp_path / "bad.safetensors"
    dq.save_weights(sd, path)
    with pytest.raises(dq.WeightsError, match=r"does not fit CKDN: 1 missing .* 1 unexpected .* 1 with other shapes") as info:
        dq.load_model(path)
    msg = str(info.value)
    assert "comparator.0.conv1.weight" in msg and "extra.weight" in msg
    assert "head.0.weight: file (10, 512) vs model (2048, 512)" in msg


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path, random_model):
    path = tmp_path / "sub" / "m.safetensors"
    dq.save_model(random_model, path)
    dq.save_model(random_model, path)  # overwrite in place
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.safetensors"]


@pytest.mark.parametrize("failure", [OSError("No space left on device (simulated)"), KeyboardInterrupt("simulated Ctrl-C")],
                         ids=["disk_full", "interrupted"])
def test_a_save_that_fails_mid_write_keeps_the_old_file(tmp_path, random_model, monkeypatch, failure):
    """The writer dies after half a file: the previous weights stay intact and no temp file is left."""
    import drqa_plugin.weights as weights_module

    path = tmp_path / "m.safetensors"
    dq.save_model(random_model, path)
    old_bytes = path.read_bytes()
    written_to = []

    def write_half_then_fail(tensors, filename, metadata=None):
        save_file(tensors, filename, metadata=metadata)
        data = Path(filename).read_bytes()
        Path(filename).write_bytes(data[: len(data) // 2])
        written_to.append(Path(filename))
        raise failure

    monkeypatch.setattr(weights_module, "save_file", write_half_then_fail)
    changed = {k: v + 1 if v.is_floating_point() else v for k, v in random_model.state_dict().items()}
    with pytest.raises(type(failure), match="simulated"):
        dq.save_weights(changed, path, provenance="a newer model")
    assert written_to and written_to[0].parent == path.parent and written_to[0] != path  # a temp file beside it
    assert path.read_bytes() == old_bytes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]
    monkeypatch.undo()
    torch.testing.assert_close(dq.load_model(path).state_dict()["head.0.weight"], random_model.state_dict()["head.0.weight"])
