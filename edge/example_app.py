"""An application on the device calling splitinf's local V2 endpoint with stock tritonclient.

    pip install "tritonclient[grpc]"
    python edge/example_app.py --url 127.0.0.1:8001 --model model inputs/digit0.npy

Nothing here is splitinf's: the same code calls a Triton server. The endpoint answers with the
full model's outputs and says in the response parameters how it produced them (the path taken:
split at a cut, or the fallback model on the device) and how long each stage took.
"""

from __future__ import annotations

import argparse

import numpy as np
import tritonclient.grpc as triton


def main() -> int:
    parser = argparse.ArgumentParser(description="Classify .npy inputs through the device's V2 endpoint.")
    parser.add_argument("inputs", nargs="+", help=".npy files, each one input tensor")
    parser.add_argument("--url", default="127.0.0.1:8001", help="the device endpoint (splitinf run --listen)")
    parser.add_argument("--model", default="model", help="the model name (the plan's model, or --model-name)")
    args = parser.parse_args()

    client = triton.InferenceServerClient(args.url)
    metadata = client.get_model_metadata(args.model, as_json=True)
    name, datatype = metadata["inputs"][0]["name"], metadata["inputs"][0]["datatype"]
    output = metadata["outputs"][0]["name"]
    for path in args.inputs:
        array = np.load(path)
        tensor = triton.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        result = client.infer(args.model, [tensor], client_timeout=10)
        said = result.get_response().parameters
        path_taken = said["splitinf_path"].string_param if "splitinf_path" in said else "?"
        total_ms = said["splitinf_total_ns"].int64_param / 1e6 if "splitinf_total_ns" in said else float("nan")
        top = int(np.argmax(result.as_numpy(output)))
        print(f"{path}: class {top} (answered by {path_taken} in {total_ms:.1f} ms)")
    client.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
