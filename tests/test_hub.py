"""Named weights (drqa_plugin.hub) against a loopback HTTP server: nothing leaves 127.0.0.1.

The server serves checkpoints written here (official and pyiqa CKDN layouts, a
small torchvision ResNet-50 state dict, one of our safetensors files) and counts
the requests per path, so "no request" and "exactly one download" are checked,
not assumed.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

import drqa_plugin as dq
from drqa_plugin import hub
from drqa_plugin.convert import OFFICIAL_TO_OURS
from drqa_plugin.weights import WeightsError
from tests.conftest import downscale, photo

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- fixtures


class LoopbackServer:
    """HTTP on 127.0.0.1 with per-path behaviour set by each test; counts requests per path."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[str, bytes]] = {}
        self.counts: Counter[str] = Counter()
        self.delay_s = 0.0
        self.release = threading.Event()
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner._handle(self)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False  # a hanging handler must not block teardown
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}"

    def serve(self, path: str, body: bytes, mode: str = "ok") -> None:
        """mode: "ok", "truncated" (Content-Length of the whole body, half of it sent) or "hang"."""
        self.routes[path] = (mode, body)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        path = urllib.parse.unquote(handler.path.lstrip("/"))
        with self._lock:
            self.counts[path] += 1
        if self.delay_s:
            time.sleep(self.delay_s)
        mode, body = self.routes.get(path, ("missing", b""))
        if mode == "missing":
            handler.send_error(404, "Not Found")
            return
        if mode == "hang":
            self.release.wait(30)
            return
        handler.send_response(200)
        handler.send_header("Content-Type", "application/octet-stream")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        try:
            handler.wfile.write(body[: len(body) // 2] if mode == "truncated" else body)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    srv = LoopbackServer()
    yield srv
    srv.close()


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    """A private cache and torch.hub folder; no mirror, online, and no proxy for 127.0.0.1."""
    root = tmp_path / "drqa_home"
    monkeypatch.setenv("DRQA_HOME", str(root))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    for var in ("DRQA_MIRROR", "DRQA_OFFLINE", "HF_HUB_OFFLINE", "http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    return root


@pytest.fixture
def register():
    """hub.register_weights, with every name registered by the test removed afterwards."""
    names: list[str] = []

    def _register(name: str, **kwargs) -> hub.WeightsEntry:
        entry = hub.register_weights(name, **kwargs)
        names.append(name)
        return entry

    yield _register
    for name in names:
        if name in hub.weights_names():
            hub.unregister_weights(name)


@dataclass(frozen=True)
class Published:
    path: Path
    file_name: str
    data: bytes
    sha256: str


def _publish(path: Path, obj: object) -> Published:
    torch.save(obj, path)
    data = path.read_bytes()
    return Published(path, path.name, data, hashlib.sha256(data).hexdigest())


def _official_name(key: str) -> str:
    for official, ours in OFFICIAL_TO_OURS.items():
        if key.startswith(ours + "."):
            return official + key[len(ours) :]
    raise KeyError(key)


@pytest.fixture(scope="module")
def published(tmp_path_factory, random_model) -> dict[str, Published]:
    """The random CKDN in both published layouts: official model_best.pth.tar and pyiqa's flat net. dict."""
    root = tmp_path_factory.mktemp("published")
    official_sd = {_official_name(k): v for k, v in random_model.state_dict().items()}
    official = {
        "epoch": 3,
        "state_dict": {"module." + k: v for k, v in official_sd.items()},
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.01, "params": [0]}]},
        "args": argparse.Namespace(lr=0.01, arch="resnet50"),
    }
    return {
        "official": _publish(root / "model_best_test.pth.tar", official),
        "pyiqa": _publish(root / "CKDN_test.pth", {"net." + k: v for k, v in official_sd.items()}),
    }


@pytest.fixture(scope="module")
def pairs():
    restored = [photo(name, 64) for name in ("astronaut", "coffee")]
    return restored, [downscale(img, 4) for img in restored]


def _weights_files(root: Path) -> list[str]:
    """Everything in the cache but lock files (which are empty and harmless by design)."""
    return sorted(p.name for p in root.iterdir() if not p.name.endswith(".lock")) if root.exists() else []


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _assert_manual_fix(message: str, name: str, file_name: str, sha: str, cache: Path) -> None:
    for needle in (repr(name), file_name, sha[:8], str(cache), str(cache / file_name)):
        assert needle in message, f"{needle!r} missing from:\n{message}"


# --------------------------------------------------------------------------- CKDN entries


@pytest.mark.parametrize("layout", ["official", "pyiqa"])
def test_first_resolve_downloads_and_converts_once_and_scores_like_drqa_convert(
    server, register, published, pairs, cache, tmp_path, monkeypatch, layout
):
    from drqa_plugin.cli import main as drqa_main

    pub = published[layout]
    server.serve(pub.file_name, pub.data)
    register("test_ckdn", urls=[server.url(pub.file_name)], sha256=pub.sha256, layout=layout, licence="MIT (test)")

    path = hub.resolve_weights("test_ckdn", progress=False)
    assert path.parent == cache and path.suffix == ".safetensors"
    assert server.counts[pub.file_name] == 1
    meta = dq.read_metadata(path)
    assert meta["source_url"] == server.url(pub.file_name)
    assert meta["source_sha256"] == pub.sha256
    assert meta["license"] == "MIT (test)"
    assert f"{layout} CKDN layout" in meta["provenance"]
    assert not any(name.endswith((".partial", ".tmp")) for name in _weights_files(cache))

    reference = tmp_path / "drqa_convert.safetensors"
    assert drqa_main(["convert", str(pub.path), str(reference)]) == 0
    restored, degraded = pairs
    ours = dq.DRIQA(hub.resolve_weights("test_ckdn"))(restored, degraded)
    theirs = dq.DRIQA(reference)(restored, degraded)
    assert torch.equal(ours, theirs)
    assert server.total == 1, "the second resolve must read the cache, not the network"

    monkeypatch.setenv("DRQA_OFFLINE", "1")
    assert hub.resolve_weights("test_ckdn") == path
    assert server.total == 1


@pytest.mark.parametrize("failure", ["corrupt", "truncated", "404", "closed_port"])
def test_failed_download_explains_every_url_leaves_nothing_and_a_later_download_works(
    server, register, published, cache, failure
):
    pub = published["pyiqa"]
    good = server.url(pub.file_name)
    first = f"http://127.0.0.1:{_closed_port()}/{pub.file_name}" if failure == "closed_port" else good
    second = server.url("elsewhere/" + pub.file_name)  # never served: 404
    if failure == "corrupt":
        server.serve(pub.file_name, pub.data[:-64] + bytes(64))
    elif failure == "truncated":
        server.serve(pub.file_name, pub.data, mode="truncated")
    entry = {"sha256": pub.sha256[:8], "layout": "pyiqa", "licence": "MIT (test)", "file_name": pub.file_name}
    register("test_ckdn", urls=[first, second], **entry)

    with pytest.raises(hub.DownloadError, match="could not download weights 'test_ckdn'") as info:
        hub.resolve_weights("test_ckdn", progress=False)
    message = str(info.value)
    why = {
        "corrupt": "does not start with " + pub.sha256[:8],
        "truncated": "truncated response",
        "404": "HTTP 404",
        "closed_port": "connection refused",
    }[failure]
    reasons = {line.split(": ", 1)[0]: line for line in message.splitlines() if line.startswith("  - ")}
    assert why in reasons[f"  - {first}"] and "HTTP 404" in reasons[f"  - {second}"]
    _assert_manual_fix(message, "test_ckdn", pub.file_name, pub.sha256, cache)
    assert "drqa convert" in message
    assert _weights_files(cache) == []

    if failure == "closed_port":
        hub.unregister_weights("test_ckdn")
        register("test_ckdn", urls=[good], **entry)
    server.serve(pub.file_name, pub.data)
    path = hub.resolve_weights("test_ckdn", progress=False)
    assert dq.read_metadata(path)["source_sha256"] == pub.sha256
    assert _weights_files(cache) == sorted([pub.file_name, path.name])


def test_a_hanging_server_times_out(server, register, cache):
    server.serve("slow.pth", b"", mode="hang")
    register("test_slow", urls=[server.url("slow.pth")], sha256="0" * 8, layout="pyiqa", licence="MIT (test)")
    start = time.monotonic()
    with pytest.raises(hub.DownloadError, match=r"slow\.pth: timed out"):
        hub.resolve_weights("test_slow", timeout=0.5, progress=False)
    assert time.monotonic() - start < 10
    assert _weights_files(cache) == []


@pytest.mark.parametrize("variable", ["DRQA_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_makes_no_request_and_says_how_to_fix(server, register, published, cache, monkeypatch, variable):
    pub = published["pyiqa"]
    server.serve(pub.file_name, pub.data)
    register("test_ckdn", urls=[server.url(pub.file_name)], sha256=pub.sha256, layout="pyiqa", licence="MIT (test)")
    monkeypatch.setenv(variable, "1")
    with pytest.raises(hub.DownloadError, match="downloads are disabled") as info:
        hub.resolve_weights("test_ckdn")
    _assert_manual_fix(str(info.value), "test_ckdn", pub.file_name, pub.sha256, cache)
    assert "drqa convert" in str(info.value)
    assert server.total == 0


def test_a_verified_file_in_pyiqa_cache_is_converted_without_downloading(
    server, register, published, cache, tmp_path
):
    pub = published["pyiqa"]
    server.serve(pub.file_name, pub.data)
    register("test_ckdn", urls=[server.url(pub.file_name)], sha256=pub.sha256[:8], layout="pyiqa", licence="MIT")
    pyiqa_copy = tmp_path / "torch_home" / "hub" / "pyiqa" / pub.file_name
    pyiqa_copy.parent.mkdir(parents=True)
    pyiqa_copy.write_bytes(pub.data)

    path = hub.resolve_weights("test_ckdn", progress=False)
    assert server.total == 0
    assert dq.read_metadata(path)["source_sha256"] == pub.sha256
    assert pyiqa_copy.read_bytes() == pub.data  # pyiqa's file is read, never moved


def test_two_processes_resolving_at_once_download_once(server, register, published, cache, tmp_path):
    pub = published["pyiqa"]
    server.serve(pub.file_name, pub.data)
    server.delay_s = 0.5  # keep the first download in flight while the other process arrives
    go = tmp_path / "go"
    child = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from drqa_plugin import hub\n"
        "hub.register_weights('test_ckdn', urls=[sys.argv[1]], sha256=sys.argv[2], layout='pyiqa', licence='MIT')\n"
        "print('ready', flush=True)\n"
        "while not Path(sys.argv[3]).exists():\n"
        "    time.sleep(0.005)\n"
        "print(hub.resolve_weights('test_ckdn', progress=False), flush=True)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    argv = [sys.executable, "-c", child, server.url(pub.file_name), pub.sha256, str(go)]
    procs = [subprocess.Popen(argv, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]
    procs.append(subprocess.Popen(argv, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        for proc in procs:
            assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        go.touch()
        outputs = [proc.communicate(timeout=120) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err
    paths = {out.strip().splitlines()[-1] for out, _ in outputs}
    assert paths == {str(cache / "CKDN_test.safetensors")}
    assert server.counts[pub.file_name] == 1
    assert dq.read_metadata(cache / "CKDN_test.safetensors")["source_sha256"] == pub.sha256


# --------------------------------------------------------------------------- other layouts, mirror, listing


@pytest.fixture(scope="module")
def resnet_file(tmp_path_factory) -> Published:
    """conv1/layer1/layer2 of a torchvision ResNet-50, saved under torch.hub's <name>-<sha8>.pth naming."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(1)
    state = {k: v for k, v in torchvision.models.resnet50(weights=None).state_dict().items()
             if k.split(".")[0] in ("conv1", "layer1", "layer2")}
    root = tmp_path_factory.mktemp("resnet")
    tmp = _publish(root / "resnet50.pth", state)
    final = root / f"resnet50-{tmp.sha256[:8]}.pth"
    tmp.path.rename(final)
    return Published(final, final.name, tmp.data, tmp.sha256)


def test_imagenet_copy_resolves_to_the_verified_pth_that_init_accepts(
    server, register, resnet_file, cache, tmp_path, monkeypatch
):
    server.serve(resnet_file.file_name, resnet_file.data)
    register(
        "test_imagenet_resnet50",
        urls=[server.url(resnet_file.file_name)],
        sha256=resnet_file.sha256[:8],
        layout="torchvision",
        licence="BSD-3-Clause (test)",
    )
    path = hub.resolve_weights("test_imagenet_resnet50", progress=False)
    assert path == cache / resnet_file.file_name and path.read_bytes() == resnet_file.data
    model = dq.create_model("ckdn_r50")
    dq.init_from_imagenet_resnet50(model, path)
    expected = torch.load(resnet_file.path, weights_only=True)
    assert torch.equal(model.state_dict()["restored_encoder.stem.weight"], expected["conv1.weight"])
    assert hub.resolve_weights("test_imagenet_resnet50") == path
    assert server.total == 1

    # A fresh cache: a corrupt copy in torch.hub's checkpoints is ignored (and left alone), a good one is used.
    monkeypatch.setenv("DRQA_HOME", str(tmp_path / "second"))
    hub_copy = tmp_path / "torch_home" / "hub" / "checkpoints" / resnet_file.file_name
    hub_copy.parent.mkdir(parents=True)
    hub_copy.write_bytes(b"not a checkpoint")
    with pytest.warns(UserWarning, match=f"ignoring {hub_copy}"):
        assert hub.resolve_weights("test_imagenet_resnet50").read_bytes() == resnet_file.data
    assert server.total == 2 and hub_copy.read_bytes() == b"not a checkpoint"
    monkeypatch.setenv("DRQA_HOME", str(tmp_path / "third"))
    hub_copy.write_bytes(resnet_file.data)
    assert hub.resolve_weights("test_imagenet_resnet50") == tmp_path / "third" / resnet_file.file_name
    assert server.total == 2


def test_mirror_is_tried_first_and_prefetched_cache_works_offline(
    server, register, weights_file, cache, tmp_path, monkeypatch
):
    data = weights_file.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    server.serve("primary/lab.safetensors", data)
    server.serve("mirror/lab.safetensors", data)
    register("test_lab", urls=[server.url("primary/lab.safetensors")], sha256=sha, layout="drqa", licence="CC-BY-4.0")
    monkeypatch.setenv("DRQA_MIRROR", server.url("mirror"))
    path = hub.resolve_weights("test_lab", progress=False)
    assert dq.read_metadata(path)["provenance"] == "random weights for tests"
    assert server.counts == Counter({"mirror/lab.safetensors": 1})

    # A mirror without the file falls back to the registered URL.
    server.serve("primary/other.safetensors", data)
    register("test_other", urls=[server.url("primary/other.safetensors")], sha256=sha[:12], layout="drqa",
             licence="CC-BY-4.0")
    with pytest.warns(UserWarning, match=r"mirror/other\.safetensors: HTTP 404"):
        hub.resolve_weights("test_other", progress=False)
    assert server.counts["mirror/other.safetensors"] == 1 and server.counts["primary/other.safetensors"] == 1

    prefetch = tmp_path / "prefetch"
    assert hub.download_weights(["test_lab"], to=prefetch, progress=False) == [prefetch / "lab.safetensors"]
    requests = server.total
    monkeypatch.setenv("DRQA_HOME", str(prefetch))
    monkeypatch.setenv("DRQA_OFFLINE", "1")
    assert hub.resolve_weights("test_lab") == prefetch / "lab.safetensors"
    assert server.total == requests


def test_paths_win_unknown_names_are_explained(server, register, tmp_path, monkeypatch):
    register("test_ckdn", urls=[server.url("x.pth")], sha256="ab" * 4, layout="pyiqa", licence="MIT")
    (tmp_path / "test_ckdn").write_bytes(b"a local file that happens to share the name")
    monkeypatch.chdir(tmp_path)
    assert hub.resolve_weights("test_ckdn") == Path("test_ckdn")
    assert hub.resolve_weights(tmp_path / "test_ckdn") == tmp_path / "test_ckdn"
    with pytest.raises(WeightsError, match="weights file not found: .*not a known weights name") as info:
        hub.resolve_weights("no_such_weights")
    assert "ckdn_pipal" in str(info.value) and "imagenet_resnet50" in str(info.value)
    with pytest.raises(WeightsError, match="unknown weights name"):
        hub.download_weights(["ckdn_pipal", "no_such_weights"])
    assert server.total == 0


def test_registration_rules(register):
    kwargs = {"urls": ["http://127.0.0.1:9/w.pth"], "sha256": "ABCDEF0123", "layout": "pyiqa", "licence": "MIT"}
    entry = register("test_reg", **kwargs)
    assert entry.sha256 == "abcdef0123" and entry.file_name == "w.pth" and entry.cached_name == "w.safetensors"
    assert hub.register_weights("test_reg", **kwargs) is entry
    with pytest.raises(ValueError, match="already registered"):
        hub.register_weights("test_reg", **{**kwargs, "sha256": "abcdef0124"})
    with pytest.raises(ValueError, match="already registered"):
        hub.register_weights("ckdn_pipal", **kwargs)
    with pytest.raises(ValueError, match="8 to 64 hex digits"):
        hub.register_weights("test_short", **{**kwargs, "sha256": "abc"})
    with pytest.raises(ValueError, match="layout must be one of"):
        hub.register_weights("test_layout", **{**kwargs, "layout": "onnx"})
    with pytest.raises(ValueError, match="must use one of"):
        hub.register_weights("test_scheme", **{**kwargs, "urls": ["ftp://host/w.pth"]})
    assert "test_short" not in hub.weights_names()


def test_builtins_are_listed_with_their_sources_and_cache_state(server, register, weights_file, cache):
    torchvision = pytest.importorskip("torchvision")
    infos = {info.name: info for info in hub.list_weights()}
    pipal = infos["ckdn_pipal"]
    assert pipal.urls == (
        "https://huggingface.co/chaofengc/IQA-PyTorch-Weights/resolve/main/CKDN_model_best-38b27dc6.pth",
        "https://github.com/chaofengc/IQA-PyTorch/releases/download/v0.1-weights/CKDN_model_best-38b27dc6.pth",
    )
    assert (pipal.sha256, pipal.layout, pipal.cached) == ("38b27dc6", "pyiqa", False)
    assert pipal.cache_path == cache / "CKDN_model_best-38b27dc6.safetensors" and "MIT" in pipal.licence
    resnet = infos["imagenet_resnet50"]
    assert resnet.urls == (torchvision.models.ResNet50_Weights.IMAGENET1K_V1.url,)
    assert (resnet.file_name, resnet.sha256, resnet.layout) == ("resnet50-0676ba61.pth", "0676ba61", "torchvision")

    data = weights_file.read_bytes()
    server.serve("lab.safetensors", data)
    register("test_lab", urls=[server.url("lab.safetensors")], sha256=hashlib.sha256(data).hexdigest(),
             layout="drqa", licence="CC-BY-4.0", description="our lab's model")
    hub.resolve_weights("test_lab", progress=False)
    lab = {info.name: info for info in hub.list_weights()}["test_lab"]
    assert lab.cached and lab.size == len(data) and lab.cache_path == cache / "lab.safetensors"
    table = hub.format_weights_table()
    for needle in ("ckdn_pipal", "imagenet_resnet50", "test_lab", "our lab's model", str(cache)):
        assert needle in table


def test_imagenet_entry_without_torchvision_is_listed_but_says_it_is_needed(monkeypatch, cache):
    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.setitem(sys.modules, "torchvision.models", None)
    resnet = {info.name: info for info in hub.list_weights()}["imagenet_resnet50"]
    assert resnet.urls == () and not resnet.cached
    with pytest.raises(hub.DownloadError, match="torchvision is needed") as info:
        hub.resolve_weights("imagenet_resnet50")
    _assert_manual_fix(str(info.value), "imagenet_resnet50", "resnet50-0676ba61.pth", "0676ba61", cache)
    assert "model.init" in str(info.value)


# --------------------------------------------------------------------------- every face accepts a name


def test_every_face_accepts_a_registered_name(server, register, published, resnet_file, pairs, tmp_path, capsys):
    """DRIQA, DRIQALoss, load_model, BasicSR's option check and metric, the CLI and the trainer's
    model.init all take a weights name; the first of them downloads, the rest read the cache."""
    from drqa_plugin.cli import main as drqa_main
    from drqa_plugin.integrations import common
    from drqa_plugin.loss import DRIQALoss
    from drqa_plugin.train.config import load_config
    from drqa_plugin.train.trainer import build_model

    pub = published["pyiqa"]
    server.serve(pub.file_name, pub.data)
    server.serve(resnet_file.file_name, resnet_file.data)
    register("lab_ckdn_v3", urls=[server.url(pub.file_name)], sha256=pub.sha256, layout="pyiqa", licence="MIT")
    register("lab_resnet50", urls=[server.url(resnet_file.file_name)], sha256=resnet_file.sha256[:8],
             layout="torchvision", licence="BSD-3-Clause (test)")
    restored, degraded = pairs

    reference = dq.DRIQA(hub.resolve_weights("lab_ckdn_v3", progress=False))(restored, degraded)
    assert torch.equal(dq.DRIQA("lab_ckdn_v3")(restored, degraded), reference)
    assert isinstance(dq.load_model("lab_ckdn_v3"), dq.CKDN)
    x = torch.rand(1, 3, 48, 48)
    loss_by_name = DRIQALoss(weights="lab_ckdn_v3")(x, x[..., ::4, ::4])
    loss_by_file = DRIQALoss(weights=hub.resolve_weights("lab_ckdn_v3"))(x, x[..., ::4, ::4])
    assert torch.equal(loss_by_name, loss_by_file)

    spec = common.scorer_spec("lab_ckdn_v3", where="val.metrics.driqa", device="cpu")
    assert Path(spec.weights) == hub.resolve_weights("lab_ckdn_v3")
    out, lq = tmp_path / "out", tmp_path / "lq"
    out.mkdir()
    lq.mkdir()
    from PIL import Image

    Image.fromarray(restored[0]).save(out / "a.png")
    Image.fromarray(degraded[0]).save(lq / "a.png")
    assert drqa_main(["score", "--weights", "lab_ckdn_v3", "--restored", str(out / "a.png"),
                      "--degraded", str(lq / "a.png"), "--quiet"]) == 0
    assert abs(float(capsys.readouterr().out.split()[0]) - float(reference[0])) < 1e-5

    cfg = load_config(REPO / "recipes" / "configs" / "test_tiny.yaml", ["model.init=lab_resnet50"])
    model = build_model(cfg)
    expected = torch.load(resnet_file.path, weights_only=True)
    assert torch.equal(model.state_dict()["reference_encoder.stem.weight"], expected["conv1.weight"])
    assert server.counts[pub.file_name] == 1 and server.counts[resnet_file.file_name] == 1


def test_basicsr_options_accept_a_registered_name(server, register, published, pairs):
    from drqa_plugin.integrations.basicsr import _compat

    try:
        _compat.import_basicsr()
    except ImportError as exc:
        pytest.skip(f"BasicSR is not installed: {exc}")
    from drqa_plugin.integrations.basicsr import metrics, validate

    pub = published["official"]
    server.serve(pub.file_name, pub.data)
    register("lab_ckdn_v3", urls=[server.url(pub.file_name)], sha256=pub.sha256, layout="official", licence="MIT")
    validate.check_options({"val": {"metrics": {"driqa": {"type": "calculate_driqa", "weights": "lab_ckdn_v3"}}}},
                           is_train=False)
    restored, degraded = pairs
    value = metrics.calculate_driqa(restored[0][..., ::-1].copy(), lq=degraded[0][..., ::-1].copy(),
                                    weights="lab_ckdn_v3", device="cpu")
    assert value == pytest.approx(float(dq.DRIQA("lab_ckdn_v3")(restored[:1], degraded[:1])[0]), abs=1e-6)
    assert server.total == 1


def test_weights_cli_lists_and_prefetches(server, register, published, tmp_path, capsys, monkeypatch):
    from drqa_plugin.cli import main as drqa_main

    pub = published["pyiqa"]
    server.serve(pub.file_name, pub.data)
    register("lab_ckdn_v3", urls=[server.url(pub.file_name)], sha256=pub.sha256, layout="pyiqa", licence="MIT")
    assert drqa_main(["weights", "list"]) == 0
    listing = capsys.readouterr().out
    assert "ckdn_pipal" in listing and "lab_ckdn_v3" in listing and "imagenet_resnet50" in listing
    target = tmp_path / "for_the_cluster"
    assert drqa_main(["weights", "download", "lab_ckdn_v3", "--to", str(target)]) == 0
    assert f"DRQA_HOME={target}" in capsys.readouterr().out
    monkeypatch.setenv("DRQA_HOME", str(target))
    monkeypatch.setenv("DRQA_OFFLINE", "1")
    assert dq.DRIQA("lab_ckdn_v3") is not None and server.total == 1
