"""The repository as a jail: which files a model version may open, checked before onnxruntime opens any.

A version folder's ``model.onnx`` may name external data files (TensorProto ``external_data``
``location``); those must be plain files inside the same version folder. Every path a model
reaches (model folder, version folder, ``model.onnx``, its data files) must resolve inside the
repository, so a symlink out of it is refused. ``manifest.json`` must list the sha256 of
``model.onnx`` and of every data file, unless the repository is served unsigned on purpose.

The server does not import ``onnx``: the locations come from :func:`splitinf.contract.plandir.external_data_locations`,
the same scan of the ONNX file's protobuf encoding the device uses for its plan directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePath

from splitinf.contract.files import resolves_inside, sha256_file, stays_inside
from splitinf.contract.manifest import MANIFEST_FILE, check_part
from splitinf.contract.plandir import external_data_locations
from splitinf.errors import ConfigError, IntegrityError

__all__ = ["ModelFiles", "check_model_files"]


@dataclass(frozen=True)
class ModelFiles:
    """A version folder's files, checked: the model's sha256 and its data files (name -> sha256)."""

    model: Path
    sha256: str
    data: dict[str, str]


def _data_files(model_file: Path, version_dir: Path) -> dict[str, Path]:
    """The external data files ``model_file`` names, each refused unless it is a file in ``version_dir``."""
    files = {}
    for location in sorted(external_data_locations(model_file)):
        relative = PurePath(location)
        target = version_dir / relative
        if not stays_inside(version_dir, location):
            raise IntegrityError(
                f"refusing to load {model_file}: it names external data {location!r} outside its "
                f"version folder {version_dir}; keep data files beside model.onnx (re-export with `splitinf split`)"
            )
        if not target.is_file():
            raise IntegrityError(f"refusing to load {model_file}: its external data file {target} is missing")
        files[relative.as_posix()] = target
    return files


def check_model_files(model_file: Path, repo_root: Path, *, allow_unsigned: bool = False) -> ModelFiles:
    """Check one version folder before onnxruntime opens it; IntegrityError (or ConfigError) names the problem.

    ``repo_root`` is the repository, resolved. Refused: a model folder, version folder or
    ``model.onnx`` that resolves outside it; external data outside the version folder or a
    symlink out of it; a missing or mismatching manifest (unless ``allow_unsigned``).
    """
    version_dir = model_file.parent
    for path in (version_dir.parent, version_dir, model_file):
        if not resolves_inside(path, repo_root):
            raise ConfigError(
                f"refusing to load {model_file}: {path} is a symlink to {path.resolve()}, outside the repository "
                f"{repo_root}; copy the model into the repository instead"
            )
    data = _data_files(model_file, version_dir.resolve())
    files = ModelFiles(model_file, sha256_file(model_file), {name: sha256_file(p) for name, p in data.items()})
    manifest_path = version_dir / MANIFEST_FILE
    if manifest_path.is_file() and resolves_inside(manifest_path, version_dir.resolve()):
        check_part(version_dir, "tail", model_file, files.sha256, data_files=files.data)
    elif not allow_unsigned:
        raise IntegrityError(
            f"refusing to load {model_file}: no {MANIFEST_FILE} beside it to check its sha256; export the tail "
            "with `splitinf split --repo`, or set allow_unsigned = true in the server config to serve unchecked models"
        )
    return files
