"""``splitinf triton-config REPO``: write the config.pbtxt NVIDIA Triton needs beside each tail.

Each model of the repository (a plan's ``server/`` folder, or one ``splitinf split --repo``
wrote) is opened with onnxruntime as ``splitinf serve`` opens it, and its configuration is
completed from the model the way Triton's onnxruntime backend autocompletes:
``platform: "onnxruntime_onnx"``, every input and output with data_type and dims, and
max_batch_size / dynamic_batching as splitinf would serve it. An existing config.pbtxt is
checked against the model and kept, unless ``--overwrite`` rewrites it completed.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "triton-config",
        help="write the config.pbtxt Triton needs for each tail of a model repository",
        description=(
            "Write REPO/MODEL/config.pbtxt for every model of a repository in Triton's layout (a plan's server/ "
            "folder), completed from the ONNX model as Triton's onnxruntime backend does: platform "
            '"onnxruntime_onnx", inputs and outputs with data_type and dims, max_batch_size and dynamic_batching. '
            "Existing files are checked against the model and kept unless --overwrite."
        ),
    )
    parser.add_argument("repo", type=Path, help="model repository: REPO/MODEL/VERSION/model.onnx")
    parser.add_argument("--max-batch", type=int, help="dynamic batching: max batch size (0 turns it off)")
    parser.add_argument("--batch-delay-ms", type=float, help="dynamic batching: max queue delay in ms")
    parser.add_argument("--overwrite", action="store_true", help="rewrite existing config.pbtxt files, completed")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from splitinf.cloud.model_config import CONFIG_FILE, config_pbtxt
    from splitinf.cloud.repository import load_repository
    from splitinf.errors import ConfigError

    if args.max_batch is not None and args.max_batch < 0:
        raise ConfigError(f"--max-batch {args.max_batch}: use 0 (no batching) or more")
    # Loading completes each model's config.pbtxt from the model and refuses one that contradicts it.
    models = load_repository(args.repo, max_batch_size=args.max_batch, batch_delay_ms=args.batch_delay_ms, warmup=False)
    for name, versions in models.items():
        newest = versions[max(versions, key=int)]
        for model in versions.values():
            if (model.inputs, model.outputs) != (newest.inputs, newest.outputs):
                raise ConfigError(
                    f"{args.repo / name}: versions {model.version} and {newest.version} have different inputs or "
                    "outputs; Triton's config.pbtxt describes them all, so give them separate model names"
                )
        path = args.repo / name / CONFIG_FILE
        if path.is_file() and not args.overwrite:
            print(f"kept {path} (it matches the model; --overwrite writes it completed)")
            continue
        path.write_text(config_pbtxt(newest.config))
        print(f"wrote {path}")
    return 0
