from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from drqa_plugin.data import (
    DataConfig,
    DataError,
    DegradationConfig,
    PIPALLayout,
    PIPALPairs,
    SyntheticPairs,
    build_dataset,
    get_labeller,
    list_photos,
    ms_ssim,
    read_pipal_list,
    ssim,
)
from drqa_plugin.data.pipal import mos_to_target
from drqa_plugin.errors import ConfigError
from drqa_plugin.data.synthetic import RestoreContext, degrade, restore, sample_rng

IMAGE_KEYS = ("restored", "degraded", "restored_2", "pristine")
CROP = 64


@pytest.fixture(scope="module")
def cfg() -> DataConfig:
    return DataConfig(crop=CROP, num_samples=24, val_samples=6, seed=3)


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


# ---------------------------------------------------------------- synthetic


def test_sample_format(cfg):
    ds = build_dataset(cfg, "train")
    assert isinstance(ds, SyntheticPairs) and len(ds) == 24
    for i in (0, 5, 23):
        s = ds[i]
        for key in IMAGE_KEYS:
            x = s[key]
            assert x.dtype == torch.float32 and x.shape == (3, CROP, CROP), key
            assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0, key
        for key in ("target", "target_2"):
            assert s[key].dtype == torch.float32 and s[key].ndim == 0
            assert 0.0 <= float(s[key]) <= 1.0
        assert isinstance(s["group"], int) and isinstance(s["name"], str)
    # The groups without synthesising a sample: what the trainer's reference check pairs by.
    assert ds.group_ids() == [ds[i]["group"] for i in range(len(ds))]
    with pytest.raises(IndexError, match=r"sample index 24 out of range \[0, 24\)"):
        ds[24]


def test_deterministic_across_instances_and_workers(cfg):
    a, b = build_dataset(cfg, "train"), build_dataset(cfg, "train")
    for i in (0, 7, 19):
        _same(a[i], b[i])
    assert not torch.equal(a[0]["restored"], a[1]["restored"])
    # Another seed or epoch gives other samples, again reproducibly.
    other = build_dataset(DataConfig(crop=CROP, num_samples=24, seed=4), "train")
    assert not torch.equal(other[0]["degraded"], a[0]["degraded"])
    b.set_epoch(1)
    assert not torch.equal(b[2]["degraded"], a[2]["degraded"])
    a.set_epoch(1)
    _same(a[2], b[2])
    a.set_epoch(0)
    # DataLoader worker processes see exactly what direct indexing gives.
    loader = DataLoader(a, batch_size=4, num_workers=2, shuffle=False)
    batch = next(iter(loader))
    for j in range(4):
        for key in IMAGE_KEYS:
            assert torch.equal(batch[key][j], a[j][key])
        assert batch["target"][j] == a[j]["target"]
    assert batch["target"].dtype == torch.float32


def test_train_val_split_by_photo(cfg):
    train, val = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    assert len(val) == 6
    train_names = {p.name for p in train.photos}
    val_names = {p.name for p in val.photos}
    assert val_names and not train_names & val_names
    assert {train[i]["group"] for i in range(len(train))}.isdisjoint({val[i]["group"] for i in range(len(val))})
    chosen = build_dataset(DataConfig(crop=CROP, val_photos=("astronaut", "coffee")), "val")
    assert [p.name for p in chosen.photos] == ["astronaut", "coffee"]
    with pytest.raises(DataError, match="not among the photos"):
        build_dataset(DataConfig(crop=CROP, val_photos=("nope",)), "val")


def test_bundled_photos_are_real_and_grey_becomes_rgb():
    photos = list_photos()
    names = {p.name for p in photos}
    assert {"astronaut", "coffee", "chelsea", "rocket", "camera"} <= names
    ds = build_dataset(DataConfig(crop=CROP, val_photos=("camera",)), "val")
    s = ds[0]
    # camera.png is greyscale: the three channels of the pristine crop are equal.
    assert torch.equal(s["pristine"][0], s["pristine"][1])
    assert float(s["pristine"].std()) > 0.01


def test_labels_rank_clean_above_heavily_degraded():
    pristine_np = np.asarray(Image.open(list_photos()[0].path).convert("RGB"), dtype=np.float32)[:128, :128] / 255
    heavy = DegradationConfig(scale_range=(4, 4), blur_prob=1, blur_sigma_range=(2, 2), noise_prob=1,
                              noise_sigma_range=(0.08, 0.08), jpeg_prob=1, jpeg_quality_range=(10, 10))
    degraded, low = degrade(pristine_np, heavy, sample_rng(0, "train", 0, 0))
    mild, _ = degrade(pristine_np, DegradationConfig(scale_range=(1.2, 1.2), blur_prob=0, noise_prob=0,
                                                     jpeg_prob=0), sample_rng(0, "train", 0, 0))
    as_t = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))[None]  # noqa: E731
    p = as_t(pristine_np)
    batch = torch.cat([p, as_t(mild), as_t(degraded)])
    for name in ("ssim", "ms_ssim"):
        q = get_labeller(name)(batch, p)
        assert q[0] == pytest.approx(1.0, abs=1e-4), name
        assert q[0] > q[1] > q[2], (name, q)
    # "detail" (part of the way back to pristine) beats the degraded input it started from.
    ctx = RestoreContext(degraded, low, pristine_np)
    better = restore(ctx, ["detail"], np.random.default_rng(0))
    q = ms_ssim(torch.cat([as_t(better), as_t(degraded)]), p)
    assert q[0] > q[1]


def test_ssim_matches_skimage():
    from skimage.metrics import structural_similarity

    x = np.asarray(Image.open(list_photos()[2].path).convert("L"), dtype=np.float64)[:96, :96] / 255
    rng = np.random.default_rng(0)
    y = np.clip(x + rng.normal(scale=0.05, size=x.shape), 0, 1)
    ref = structural_similarity(x, y, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0)
    to_t = lambda a: torch.from_numpy(a).float()[None, None].expand(1, 3, -1, -1)  # noqa: E731
    ours = float(ssim(to_t(y), to_t(x)))
    # skimage averages over the image minus a 5 px border, as our "valid" filtering does.
    assert ours == pytest.approx(ref, abs=1e-4)


def test_stlpips_labeller_if_installed():
    # The Makefile's test install adds it (pip install --no-deps stlpips-pytorch); only then does this run.
    pytest.importorskip("stlpips_pytorch", reason="stlpips-pytorch is not installed (make install-test adds it)")
    lab = get_labeller("stlpips_alex")
    x = build_dataset(DataConfig(crop=CROP), "train")[0]
    q = lab(torch.stack([x["pristine"], x["pristine"] * 0.5]), x["pristine"][None])
    assert q[0] == pytest.approx(1.0, abs=1e-4) and q[1] < q[0]


def test_folder_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        list_photos(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no image files"):
        build_dataset(DataConfig(root=str(empty), crop=CROP), "train")
    (empty / "broken.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="no readable images"):
        build_dataset(DataConfig(root=str(empty), crop=CROP), "train")
    with pytest.raises(ValueError, match="unknown labeller"):
        build_dataset(DataConfig(labeller="nope", crop=CROP), "train")


def test_own_folder_small_photos_are_upscaled(tmp_path):
    rng = np.random.default_rng(0)
    for name, size in (("a", (40, 50)), ("b", (80, 90)), ("c", (70, 70))):
        Image.fromarray(rng.integers(0, 255, size=(*size, 3), dtype=np.uint8)).save(tmp_path / f"{name}.png")
    cfg = DataConfig(root=str(tmp_path), crop=CROP, val_photos=("c",), num_samples=4)
    ds = build_dataset(cfg, "train")
    assert [p.name for p in ds.photos] == ["a", "b"]
    assert all(ds[i]["restored"].shape == (3, CROP, CROP) for i in range(2))


def test_config_validation_and_dict():
    cfg = DataConfig.from_dict({"crop": 96, "degradation": {"scale_range": [2, 3]}, "restoration": {"max_ops": 1}})
    assert cfg.degradation.scale_range == (2.0, 3.0) and cfg.restoration.max_ops == 1
    for bad, message in (
        ({"kind": "imagenet"}, "data.kind must be one of"),
        ({"crop": 4}, "data.crop must be >= 16, got 4"),
        ({"val_fraction": 1.5}, r"data.val_fraction must be in \(0, 1\), got 1.5"),
        ({"degradation": {"blur_prob": 2}}, r"degradation.blur_prob must be a probability in \[0, 1\]"),
        ({"degradation": {"scale_range": [3, 2]}}, r"degradation.scale_range must satisfy .* got \(3.0, 2.0\)"),
        ({"restoration": {"ops": ["magic"]}}, r"restoration.ops must be a non-empty subset .* got \('magic',\)"),
        ({"kind": "pipal"}, "data.kind='pipal' needs data.root and data.list_file"),
        ({"seed": -1}, "data.seed must be a non-negative integer, got -1"),
        ({"nope": 1}, r"unknown config key\(s\) \['data.nope'\]"),
        ({"degradation": {"nope": 1}}, r"unknown config key\(s\) \['data.degradation.nope'\]"),
    ):
        with pytest.raises(ValueError, match=message):
            DataConfig.from_dict(bad)


# ---------------------------------------------------------------- PIPAL layout


def _img(path: Path, value: int, size: int = 40) -> np.ndarray:
    rng = np.random.default_rng(value)
    arr = rng.integers(0, 255, size=(size, size, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return arr


def make_pipal(root: Path, scenes=("A0001", "A0002", "A0003"), per_scene: int = 3) -> tuple[Path, dict]:
    """A tiny PIPAL-layout folder: BMP images, ref_ degraded, pristine, list with MOS and a _06_ name."""
    root.mkdir(parents=True, exist_ok=True)
    arrays, lines, k = {}, [], 0
    for scene in scenes:
        _img(root / f"{scene}.bmp", 1000 + k)
        for j in range(per_scene):
            name = f"{scene}_{j:02d}_{j:02d}.bmp"
            arrays[name] = _img(root / name, k)
            _img(root / f"ref_{name}", 500 + k)
            lines.append(f"{name},{1000 + 37 * k}")
            k += 1
    dropped = f"{scenes[0]}_06_00.bmp"  # dropped by name, so its files need not exist
    lines.append(f"{dropped},1500")
    list_file = root / "train_list.txt"
    list_file.write_text("\n".join(lines) + "\n")
    return list_file, arrays


def test_pipal_parsing_and_samples(tmp_path):
    list_file, arrays = make_pipal(tmp_path / "pipal")
    entries = read_pipal_list(list_file)
    assert len(entries) == 9 and all("_06_" not in e.name for e in entries)
    assert entries[0].scene == "A0001" and entries[0].line == 1
    ds = PIPALPairs(tmp_path / "pipal", list_file, crop=40)
    assert len(ds) == 9
    for i in range(len(ds)):
        s = ds[i]
        e = entries[i]
        assert s["name"] == e.name
        assert float(s["target"]) == pytest.approx(mos_to_target(e.mos)) == pytest.approx((e.mos - 900) / 1000)
        assert s["restored"].shape == (3, 40, 40)
        assert torch.equal((s["restored"] * 255).round().byte().permute(1, 2, 0), torch.from_numpy(arrays[e.name]))
        # restored_2 is another image of the same scene, with its own target.
        partners = [n for n in arrays if n.startswith(e.scene) and n != e.name]
        match = [n for n in partners
                 if torch.equal((s["restored_2"] * 255).round().byte().permute(1, 2, 0), torch.from_numpy(arrays[n]))]
        assert len(match) == 1
        assert float(s["target_2"]) == pytest.approx(mos_to_target(next(x.mos for x in entries if x.name == match[0])))
    _same(ds[4], PIPALPairs(tmp_path / "pipal", list_file, crop=40)[4])
    cropped = PIPALPairs(tmp_path / "pipal", list_file, crop=24)[0]
    assert all(cropped[k].shape == (3, 24, 24) for k in IMAGE_KEYS)


def test_pipal_split_and_build_dataset(tmp_path):
    list_file, _ = make_pipal(tmp_path / "pipal", scenes=("A0001", "A0002", "A0003", "A0004", "A0005"))
    cfg = DataConfig(kind="pipal", root=str(tmp_path / "pipal"), list_file=str(list_file), crop=32, val_fraction=0.4)
    train, val = build_dataset(cfg, "train"), build_dataset(cfg, "val")
    train_scenes = {e.scene for e in train.entries}
    val_scenes = {e.scene for e in val.entries}
    assert len(val_scenes) == 2 and len(train_scenes) == 3 and not train_scenes & val_scenes
    # Validation crops are central, training crops random but reproducible.
    v = val[0]
    full = PIPALPairs(tmp_path / "pipal", list_file, crop=40)
    idx = [e.name for e in full.entries].index(v["name"])
    assert torch.equal(v["restored"], full[idx]["restored"][:, 4:36, 4:36])


def _as_uint8(crop: torch.Tensor) -> np.ndarray:
    return (crop * 255).round().byte().permute(1, 2, 0).numpy()


def _box(full: np.ndarray, crop: torch.Tensor) -> tuple[int, int] | None:
    """Where ``crop`` sits in ``full`` (random-noise images: at most one place)."""
    c, want = crop.shape[-1], _as_uint8(crop)
    hits = [(top, left) for top in range(full.shape[0] - c + 1) for left in range(full.shape[1] - c + 1)
            if np.array_equal(full[top:top + c, left:left + c], want)]
    assert len(hits) <= 1, hits
    return hits[0] if hits else None


def _crop_boxes(ds: PIPALPairs, root: Path) -> list[tuple[int, int]]:
    """One crop box per sample, after checking all four images of the sample were cut at it."""
    read = lambda name: np.asarray(Image.open(root / name).convert("RGB"))  # noqa: E731
    boxes = []
    for i in range(len(ds)):
        s = ds[i]
        name, scene = s["name"], s["name"].split("_")[0]
        found = {"restored": _box(read(name), s["restored"]), "degraded": _box(read(f"ref_{name}"), s["degraded"]),
                 "pristine": _box(read(f"{scene}.bmp"), s["pristine"])}
        partners = [e.name for e in ds.entries if e.scene == scene and e.name != name]
        found["restored_2"] = next(b for b in (_box(read(n), s["restored_2"]) for n in partners) if b is not None)
        assert None not in found.values() and len(set(found.values())) == 1, (name, found)
        boxes.append(found["restored"])
    return boxes


def test_pipal_training_crops_share_one_random_box_per_sample_and_change_with_the_epoch(tmp_path):
    list_file, _ = make_pipal(tmp_path / "pipal")
    root = tmp_path / "pipal"
    ds = PIPALPairs(root, list_file, crop=24, seed=7)  # 40 px images: 17 x 17 possible boxes
    epoch0 = _crop_boxes(ds, root)
    assert len(set(epoch0)) > 1 and epoch0 != [(8, 8)] * len(ds)  # random, not all the centre
    ds.set_epoch(1)
    epoch1 = _crop_boxes(ds, root)
    assert sum(a != b for a, b in zip(epoch0, epoch1)) >= len(ds) // 2, (epoch0, epoch1)
    # Reproducible: another instance at the same epoch cuts the same boxes; going back restores them.
    again = PIPALPairs(root, list_file, crop=24, seed=7)
    again.set_epoch(1)
    assert _crop_boxes(again, root) == epoch1
    ds.set_epoch(0)
    assert _crop_boxes(ds, root) == epoch0
    # Another seed, other boxes; validation crops (random_crop=False) are the centre.
    assert _crop_boxes(PIPALPairs(root, list_file, crop=24, seed=8), root) != epoch0
    assert _crop_boxes(PIPALPairs(root, list_file, crop=24, random_crop=False), root) == [(8, 8)] * len(ds)


def test_pipal_subfolder_layout(tmp_path):
    root = tmp_path / "p"
    for d in ("dist", "deg", "ref"):
        (root / d).mkdir(parents=True)
    _img(root / "ref" / "A0001.bmp", 1)
    for j in range(2):
        _img(root / "dist" / f"A0001_00_0{j}.bmp", 10 + j)
        _img(root / "deg" / f"ref_A0001_00_0{j}.bmp", 20 + j)
    (root / "list.txt").write_text("A0001_00_00.bmp,1200\nA0001_00_01.bmp,1300\n")
    layout = PIPALLayout(restored_dir="dist", degraded_dir="deg", pristine_dir="ref")
    ds = PIPALPairs(root, root / "list.txt", crop=40, layout=layout)
    assert float(ds[0]["target_2"]) == pytest.approx(0.4)


@pytest.mark.parametrize(
    "line,match",
    [
        ("A0001_00_00.bmp", "expected '<image name>,<MOS>'"),
        ("A0001_00_00.bmp,1200,3", "expected '<image name>,<MOS>'"),
        (",1200", "expected '<image name>,<MOS>'"),
        ("A0001_00_00.bmp,good", "is not a number"),
        ("A0001_00_00.bmp,nan", "must be finite"),
        ("A0001.bmp,1200", "cannot derive the scene"),
        ("A0001_00_01.bmp,1200", "listed twice"),
    ],
)
def test_pipal_malformed_lines(tmp_path, line, match):
    list_file = tmp_path / "list.txt"
    list_file.write_text(f"# a comment\nA0001_00_01.bmp,1100\n\n{line}\n")
    with pytest.raises(DataError, match=match) as info:
        read_pipal_list(list_file)
    assert f"{list_file}:4" in str(info.value)


@pytest.mark.parametrize("victim", ["A0002_01_01.bmp", "ref_A0002_01_01.bmp", "A0002.bmp"])
def test_pipal_missing_files(tmp_path, victim):
    list_file, _ = make_pipal(tmp_path / "pipal")
    (tmp_path / "pipal" / victim).unlink()
    with pytest.raises(DataError, match="missing") as info:
        PIPALPairs(tmp_path / "pipal", list_file, crop=32)
    message = str(info.value)
    assert victim in message and "line 5" in message and str(list_file) in message


def test_pipal_other_errors(tmp_path):
    list_file, _ = make_pipal(tmp_path / "pipal")
    with pytest.raises(DataError, match="does not exist"):
        read_pipal_list(tmp_path / "none.txt")
    with pytest.raises(DataError, match="PIPAL root"):
        PIPALPairs(tmp_path / "nowhere", list_file)
    with pytest.raises(DataError, match="smaller than crop"):
        PIPALPairs(tmp_path / "pipal", list_file, crop=64)[0]
    _img(tmp_path / "pipal" / "ref_A0001_00_00.bmp", 3, size=48)
    with pytest.raises(DataError, match="differ in size"):
        PIPALPairs(tmp_path / "pipal", list_file, crop=32)[0]
    only_comments = tmp_path / "c.txt"
    only_comments.write_text("# nothing\n\n")
    with pytest.raises(DataError, match="no usable entries"):
        read_pipal_list(only_comments)


def test_read_rgb_16bit_and_alpha(tmp_path):
    from drqa_plugin.data import read_rgb

    Image.fromarray(np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)).save(tmp_path / "g16.png")
    grey = read_rgb(tmp_path / "g16.png")
    assert grey.shape == (64, 64, 3) and grey.dtype == np.uint8
    assert grey.min() == 0 and grey.max() == 255 and abs(int(grey[32, 0, 0]) - 128) <= 1  # scaled, not clipped
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0], rgba[:4, :, 3] = 200, 255
    Image.fromarray(rgba).save(tmp_path / "a.png")
    rgb = read_rgb(tmp_path / "a.png")
    assert rgb[0, 0].tolist() == [200, 0, 0] and rgb[7, 0].tolist() == [255, 255, 255]  # transparent -> white
    with pytest.raises(DataError, match="not found"):
        read_rgb(tmp_path / "none.png")


def test_ms_ssim_close_to_pyiqa():
    # pyiqa is a test-only reference (its own Y conversion differs slightly from BT.601 luma here).
    ssim_arch = pytest.importorskip("pyiqa.archs.ssim_arch")
    x = np.asarray(Image.open(list_photos()[0].path).convert("RGB"), dtype=np.float32)[:256, :256] / 255
    x = torch.from_numpy(x).permute(2, 0, 1)[None]
    y = (x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    ref = float(ssim_arch.MS_SSIM(channels=3, test_y_channel=True)(y, x))
    assert float(ms_ssim(y, x)) == pytest.approx(ref, abs=2e-3)


def test_every_restoration_operator():
    pristine = np.asarray(Image.open(list_photos()[3].path).convert("RGB"), dtype=np.float32)[:64, :64] / 255
    degraded, low = degrade(pristine, DegradationConfig(scale_range=(3, 3)), sample_rng(0, "val", 0, 1))
    ctx = RestoreContext(degraded, low, pristine)
    for op in ("interp", "unsharp", "denoise", "ringing", "gan_texture", "detail"):
        out = restore(ctx, [op], np.random.default_rng(0))
        assert out.shape == pristine.shape and out.dtype == np.float32, op
        assert out.min() >= 0.0 and out.max() <= 1.0, op
        assert np.abs(out - degraded).mean() > 1e-4, op  # every operator changes its input
    with pytest.raises(ValueError, match="unknown restoration operator"):
        restore(ctx, ["magic"], np.random.default_rng(0))


def test_relative_list_file_is_found_under_root(tmp_path, monkeypatch):
    from drqa_plugin.data import resolve_list_file

    (tmp_path / "train.txt").write_text("A0001_00_00.bmp,1500\n")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert resolve_list_file("train.txt", str(tmp_path)) == str(tmp_path / "train.txt")
    (elsewhere / "train.txt").write_text("")
    assert resolve_list_file("train.txt", str(tmp_path)) == "train.txt"  # an existing relative path wins


def test_pipal_augment_applies_one_symmetry_to_all_images_of_a_sample(tmp_path):
    from drqa_plugin.data.pipal import dihedral

    square = np.arange(2 * 2 * 1).reshape(2, 2, 1)
    variants = {dihedral(square, k).tobytes() for k in range(8)}
    assert len(variants) == 8 and np.array_equal(dihedral(square, 0), square)  # the 8 symmetries, all distinct
    list_file, _ = make_pipal(tmp_path / "pipal")
    root = tmp_path / "pipal"
    plain = PIPALPairs(root, list_file, crop=24, seed=7)
    augmented = PIPALPairs(root, list_file, crop=24, seed=7, augment=True)
    seen = set()
    for epoch in range(3):
        plain.set_epoch(epoch)
        augmented.set_epoch(epoch)
        for i in range(len(plain)):
            a, b = plain[i], augmented[i]
            # The same crop box and partner as without augmentation, then one symmetry for every image.
            matches = [k for k in range(8)
                       if all(np.array_equal(dihedral(_as_uint8(a[key]), k), _as_uint8(b[key])) for key in IMAGE_KEYS)]
            assert matches, (epoch, i)
            seen.add(matches[0])
            assert float(a["target_2"]) == float(b["target_2"])
    assert len(seen) >= 5  # drawn, not fixed
    cfg = DataConfig(kind="pipal", root=str(root), list_file=str(list_file), crop=24, augment=True, val_fraction=0.4)
    assert build_dataset(cfg, "train").augment and not build_dataset(cfg, "val").augment
    with pytest.raises(ConfigError, match="data.augment"):
        DataConfig(augment="yes")


def test_pipal_center_labels_keeps_the_order_within_an_input_and_removes_its_mean(tmp_path):
    list_file, _ = make_pipal(tmp_path / "pipal")
    root = tmp_path / "pipal"
    plain = PIPALPairs(root, list_file, crop=24, seed=3)
    centred = PIPALPairs(root, list_file, crop=24, seed=3, center_labels=True)
    raw = np.array([float(plain[i]["target"]) for i in range(len(plain))])
    new = np.array([float(centred[i]["target"]) for i in range(len(centred))])
    scenes = np.array([e.scene for e in plain.entries])
    assert len(set(scenes)) == 3 and np.ptp([raw[scenes == s].mean() for s in set(scenes)]) > 0.1
    for s in set(scenes):
        # Same differences inside an input; every input's mean is now the split's mean.
        np.testing.assert_allclose(np.diff(new[scenes == s]), np.diff(raw[scenes == s]), atol=1e-6)
        assert new[scenes == s].mean() == pytest.approx(raw.mean(), abs=1e-6)
    for i in range(len(centred)):
        a, b = plain[i], centred[i]
        assert a["name"] == b["name"] and torch.equal(a["restored_2"], b["restored_2"])  # same partner
        # The partner's target is shifted by the same amount: the ranking target is unchanged.
        assert float(b["target"] - b["target_2"]) == pytest.approx(float(a["target"] - a["target_2"]), abs=1e-6)
    cfg = DataConfig(kind="pipal", root=str(root), list_file=str(list_file), crop=24, center_labels=True,
                     val_fraction=0.4)
    val = build_dataset(cfg, "val")  # validation always scores against the labels as they are
    assert [float(val[i]["target"]) for i in range(len(val))] == pytest.approx(
        [mos_to_target(e.mos) for e in val.entries])
    with pytest.raises(ConfigError, match="data.center_labels"):
        DataConfig(center_labels=1)


def test_pipal_groups_cut_restorations_of_one_input_at_one_box_and_collate_flat(tmp_path):
    from drqa_plugin.data import collate_groups

    list_file, arrays = make_pipal(tmp_path / "pipal", per_scene=3)
    root = tmp_path / "pipal"
    read = lambda name: np.asarray(Image.open(root / name).convert("RGB"))  # noqa: E731
    plain = PIPALPairs(root, list_file, crop=24, seed=5)
    for k, replace in ((2, False), (3, False), (5, True)):  # 3 restorations per input: 5 repeats some
        ds = PIPALPairs(root, list_file, crop=24, seed=5, group_size=k)
        assert len(ds) == 3 and ds.group_ids() == [0, 1, 2]
        for index in range(len(ds)):
            g = ds[index]
            scene = g["name"][0].split("_")[0]
            assert g["restored"].shape == g["degraded"].shape == g["pristine"].shape == (k, 3, 24, 24)
            assert all(n.split("_")[0] == scene for n in g["name"]) and len(g["name"]) == k
            assert (len(set(g["name"])) < k) == replace
            assert g["group"].tolist() == [plain.scene_ids[scene]] * k
            # One box for every image of the input; restored_2 / target_2 are the next of the group.
            boxes = {_box(read(f"{scene}.bmp"), g["pristine"][0])}
            for slot, name in enumerate(g["name"]):
                boxes |= {_box(read(name), g["restored"][slot]), _box(read(f"ref_{name}"), g["degraded"][slot])}
                assert float(g["target"][slot]) == pytest.approx(mos_to_target(
                    next(e.mos for e in plain.entries if e.name == name)))
            assert len(boxes) == 1 and None not in boxes
            assert torch.equal(g["restored_2"], g["restored"].roll(-1, 0))
            assert torch.equal(g["target_2"], g["target"].roll(-1, 0))
    ds = PIPALPairs(root, list_file, crop=24, seed=5, group_size=2)
    _same(ds[1], PIPALPairs(root, list_file, crop=24, seed=5, group_size=2)[1])  # deterministic
    drawn = set()
    for epoch in range(6):
        ds.set_epoch(epoch)
        drawn.add(tuple(ds[0]["name"]))
    assert len(drawn) >= 3  # another draw of restorations (and crop) each epoch
    # A batch of groups is one flat batch of restorations; the trainer's keys keep their meaning.
    batch = next(iter(DataLoader(ds, batch_size=2, shuffle=False, collate_fn=collate_groups)))
    assert batch["restored"].shape == (4, 3, 24, 24) and batch["target"].shape == (4,)
    assert batch["group"].tolist() == [0, 0, 1, 1] and batch["name"] == ds[0]["name"] + ds[1]["name"]
    cfg = DataConfig(kind="pipal", root=str(root), list_file=str(list_file), crop=24, group_size=2, val_fraction=0.4)
    assert build_dataset(cfg, "train").group_size == 2 and build_dataset(cfg, "val").group_size == 0
    for bad, match in (({"group_size": 1}, "data.group_size must be 0"), ({"group_size": True}, "data.group_size"),
                       ({"group_size": 2, "kind": "synthetic"}, "needs data.kind='pipal'")):
        with pytest.raises(ConfigError, match=match):
            DataConfig(**{"kind": "pipal", "root": "/x", "list_file": "l.txt", **bad})
